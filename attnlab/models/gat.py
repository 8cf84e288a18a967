"""``gat``: the GAT node classifier (Veličković et al. 2018), family ``node_classifier``.

    features [N, F]          -> Dropout(p)                                        (inputs)
    GraphAttention(F -> hidden, num_heads copy-heads, concat), ELU -> [N, num_heads·hidden]
                             -> Dropout(p)
    GraphAttention(-> C, output_heads heads, mean)                  -> logits [N, C]

Both layers drop attention coefficients with ``attention_dropout`` (default: ``dropout_rate``)
while training. The paper's Cora setting is the default: 8 heads x 8 hidden, 1 output head,
p = 0.6 (PubMed: output_heads=8). ``score`` is any registered graph score: additive (GAT),
gatv2, dot, scaled_dot, general, uniform (mean over neighbours, a GCN-like reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import modules
from attnlab.models import _common


@_common.register_model("gat")
class GAT(nnx.Module):
  family = "node_classifier"
  supports = {"score": "any graph_score (additive, gatv2, dot, scaled_dot, general, uniform)"}

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, hidden: int = 8, num_heads: int = 8,
               output_heads: int = 1, score: str = "additive", dropout_rate: float = 0.6,
               attention_dropout: float | None = None, negative_slope: float = 0.2):
    _common.check_spec(self.name, spec, "num_features", "num_classes")
    att = dropout_rate if attention_dropout is None else attention_dropout
    common = dict(score=score, dropout_rate=att, negative_slope=negative_slope, rngs=rngs)
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)
    self.layer1 = modules.GraphAttention(spec["num_features"], hidden, num_heads,
                                         head_merge="concat", **common)
    self.layer2 = modules.GraphAttention(num_heads * hidden, spec["num_classes"], output_heads,
                                         head_merge="mean", **common)

  def __call__(self, batch: dict, *, train: bool) -> tuple[jax.Array, dict]:
    x = jnp.asarray(batch["features"])  # [N, F]
    edges = jnp.asarray(batch["edges"])  # [2, E] (source, target)
    det, sow = not train, _common.sow_enabled()
    h = self.layer1(self.drop(x, deterministic=det), edges, deterministic=det, sow_weights=sow)
    h = nnx.elu(h)  # [N, H·hidden]
    logits = self.layer2(self.drop(h, deterministic=det), edges, deterministic=det,
                         sow_weights=sow)  # [N, C]
    return logits, {}
