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

Features come dense (``batch["features"]`` [N, F]) or sparse (``batch["feature_values"]`` [nnz]
with ``batch["feature_lists/*"]`` or ``batch["feature_index"]`` [nnz, 2] (node, feature), e.g.
``planetoid(sparse_features=True)``): the first projection and the input dropout then cost O(nnz)
instead of O(N·F). The graph is ``batch["edge_lists/*"]`` (``kernels.edge_incidence``: the
scatter-free fast path, as attnlab.data.graph serves it) or else ``batch["edges"]`` [2, E]; a
computation subgraph (``subgraph_hops``) serves one incidence per layer,
``batch["edge_lists/layer{0,1}/*"]``, each with only the target rows the next layer reads, so the
logits cover the first rows (the split's nodes) only.
The spec's ``score`` is any registered graph score: additive (GAT), gatv2, dot, scaled_dot,
general, uniform (mean over neighbours, a GCN-like reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import sparse

from attnlab import kernels, modules
from attnlab.attention_spec import AttentionSpec
from attnlab.kernels import segments
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
    layers = [segments.from_arrays(batch, kernels.layer_prefix(layer)) for layer in range(self.num_layers)]
    if layers[0] is None:  # one graph for both layers: its incidence, or the plain edge list
      edges = segments.from_arrays(batch, "edge_lists")  # self loops included
      layers = [jnp.asarray(batch["edges"]) if edges is None else edges] * self.num_layers
    det, sow = not train, _common.sow_enabled()
    lists = segments.from_arrays(batch, "feature_lists")
    if "feature_values" in batch:  # sparse features: dropout on the stored entries only
      values = jnp.asarray(batch["feature_values"])  # [nnz]
      if lists is not None:
        x = kernels.SparseMatrix(values, lists)
      else:
        x = sparse.BCOO((values, jnp.asarray(batch["feature_index"])), indices_sorted=True,
                        shape=(batch["labels"].shape[0], self.layer1.in_features), unique_indices=True)
      if train and self.drop.rate > 0:
        x = modules.sparse_dropout(x, self.drop.rate, self.drop.rngs())
    else:
      x = self.drop(jnp.asarray(batch["features"]), deterministic=det)  # [N, F]
    h = self.layer1(x, layers[0], deterministic=det, sow_weights=sow)
    h = nnx.elu(h)  # [N1, H·hidden]  (N1 = N, or the rows the next layer reads)
    if train and self.drop.rate > 0:  # the mask once, for the forward and backward gathers of h
      h = kernels.dropout_weights(h, self.drop.rngs(), self.drop.rate, once=True)
    logits = self.layer2(h, layers[1], deterministic=det, sow_weights=sow)  # [N2, C]
    return logits, {}
