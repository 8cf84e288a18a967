"""``gat``: the GAT node classifier (Veličković et al. 2018), family ``node_classifier``.

    features [N, F]          -> Dropout(p)                                        (inputs)
    GraphAttention(F -> hidden, num_heads copy-heads, concat), ELU -> [N, num_heads·hidden]
                             -> Dropout(p)
    GraphAttention(-> C, output_heads heads, mean)                  -> logits [N, C]

The ``attention`` spec is a graph spec (``graph=True``, ``head_mode="copy"``): the hidden layer
holds it unchanged (its score, num_heads, head_merge and dropout on the attention coefficients);
the output layer uses ``attention.replace(num_heads=output_heads, head_merge="mean")``. With
``value_dropout`` > 0 both layers also drop the projected features W h used as values (scores from
the undropped W h), as GAT's reference code does (its ``attn_head`` drops ``seq_fts`` with the
input dropout rate; configs/cora_gat.py sets 0.6). The paper's Cora setting (configs/cora_gat.py):
8 heads x 8 hidden, 1 output head, p = 0.6 for inputs and coefficients (PubMed: output_heads=8).

The batch is ``{"graph": GraphBatch, "labels", "mask"}`` (attnlab.graph_batch): features dense
[N, F] or a ``SparseMatrix`` (``planetoid(sparse_features=True)``: the first projection and the
input dropout then cost O(nnz) instead of O(N·F)), and the incidence each layer runs on (the
scatter-free fast path). A computation subgraph (``subgraph_hops``) has one incidence per layer,
each with only the receiver rows the next layer reads, so the logits cover the first rows (the
split's nodes) only.
The spec's ``score`` is any registered graph score: additive (GAT), gatv2, dot, scaled_dot,
general, uniform (mean over neighbours, a GCN-like reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import modules
from attnlab.attention_spec import AttentionSpec
from attnlab.graph_batch import SparseMatrix
from attnlab.models import _common


@_common.register_model("gat")
class GAT(nnx.Module):
  family = "node_classifier"
  num_layers = 2  # message-passing layers: the computation subgraph needs this many hops
  graph_attention = True  # takes graph specs (register_model checks)

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, attention: AttentionSpec, hidden: int = 8,
               output_heads: int = 1, dropout_rate: float = 0.6, value_dropout: float = 0.0,
               negative_slope: float = 0.2):
    _common.check_spec(self.name, spec, "num_features", "num_classes")
    hops = spec.get("subgraph_hops", 0)
    if 0 < hops < self.num_layers:  # fewer hops than layers: the outputs would be wrong
      raise ValueError(f"model {self.name!r}: the task serves {hops}-hop computation subgraphs, but "
                       f"the model has {self.num_layers} message-passing layers; set the task's "
                       f"subgraph_hops to 0 (whole graph) or >= {self.num_layers}")
    common = dict(value_dropout_rate=value_dropout, negative_slope=negative_slope, rngs=rngs)
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)
    self.layer1 = modules.GraphAttention(spec["num_features"], hidden, attention=attention, **common)
    width = attention.num_heads * hidden if attention.head_merge == "concat" else hidden
    output = attention.replace(num_heads=output_heads, head_merge="mean")
    self.layer2 = modules.GraphAttention(width, spec["num_classes"], attention=output, **common)

  def __call__(self, batch: dict, *, train: bool) -> tuple[jax.Array, dict]:
    graph = batch["graph"]
    det, sow = not train, _common.sow_enabled()
    drop = train and self.drop.rate > 0
    if isinstance(graph.features, SparseMatrix):  # dropout on the stored entries only
      x = modules.node_dropout(graph.features, self.drop.rate, self.drop.rngs()) if drop else graph.features
    else:
      x = self.drop(jnp.asarray(graph.features), deterministic=det)  # [N, F]
    h = self.layer1(x, graph, layer=0, deterministic=det, sow_weights=sow)
    h = nnx.elu(h)  # [N1, H·hidden]  (N1 = N, or the rows the next layer reads)
    if drop:  # the mask once, for the forward and backward gathers of h
      h = modules.node_dropout(h, self.drop.rate, self.drop.rngs())
    logits = self.layer2(h, graph, layer=1, deterministic=det, sow_weights=sow)  # [N2, C]
    return logits, {}
