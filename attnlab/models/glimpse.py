"""``glimpse``: a glimpse classifier that looks at image regions with a query, family ``classifier``.

Regions are the task's sequence items: the 8x8 digits as 8 pixel rows, or p x p patches
(``digits`` kwarg layout), or tokens. A query cross-attends over the regions (Show, Attend and
Tell's setting, Xu et al. 2015):

    regions [B, L, F] -> Dense + learned positions, LayerNorm            -> R [B, L, d]
    query="learned":   G learned queries [G, d], one attention call     -> c [B, G, d] -> Dense -> [B, d]
    query="recurrent": s_0 learned; for g < G: c_g = attn(s_{g-1}, R); s_g = GRU(s_{g-1}, c_g) -> s_G
    ReLU, Dense                                                            -> logits [B, C]

``target="soft"`` takes the expectation over regions; ``target="hard"`` samples ONE region per
glimpse and head (REINFORCE with a moving-average baseline and an entropy bonus, in
``attnlab.losses``; ``aux`` holds ``log_prob`` and ``entropy`` [B]); ``hard_st`` is the Gumbel
straight-through alternative. The one attention layer holds the model's ``attention`` spec (all
its fields honoured: heads, normaliser, kwargs, attention-weight dropout, impl).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import validate
from attnlab.attention_spec import AttentionSpec
from attnlab.models import _common
from attnlab.models._norm import LayerNorm
from attnlab.models.transformer import Embedder, attend, attention_layer

QUERIES = ("learned", "recurrent")


@_common.register_model("glimpse")
class GlimpseClassifier(nnx.Module):
  family = "classifier"

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, attention: AttentionSpec, d_model: int = 64,
               num_glimpses: int = 1, query: str = "learned", entropy_bonus: float = 0.01,
               baseline_decay: float = 0.9):
    _common.check_spec(self.name, spec, "num_classes", "seq_len")
    self.query = validate.choice(f"model {self.name!r}", "query", query, QUERIES)
    validate.positive_int(f"model {self.name!r}", "num_glimpses", num_glimpses)
    self.num_glimpses, d = num_glimpses, d_model
    self.regions = Embedder(d, spec["seq_len"], vocab_size=spec.get("vocab_size"),
                            input_dim=None if "vocab_size" in spec else spec["input_dim"], rngs=rngs)
    self.ln = LayerNorm(d, rngs=rngs)
    self.attn = attention_layer(d, attention, rngs=rngs)
    init = nnx.initializers.normal(1.0)
    if query == "learned":
      self.queries = nnx.Param(init(rngs.params(), (num_glimpses, d)))  # [G, d]
      self.merge = nnx.Linear(num_glimpses * d, d, rngs=rngs)
      self.cell = nnx.data(None)
    else:
      self.queries = nnx.Param(init(rngs.params(), (1, d)))  # s_0 [1, d]
      self.merge = nnx.data(None)
      self.cell = nnx.GRUCell(d, d, rngs=rngs)
    self.head = nnx.Linear(d, spec["num_classes"], rngs=rngs)
    _common.reinforce_state(self, attention.target, entropy_bonus, baseline_decay)

  def __call__(self, batch: dict, *, train: bool) -> tuple[jax.Array, dict]:
    x = jnp.asarray(batch["inputs"])  # [B, L, F] (or tokens [B, L])
    r, valid = self.regions(x)  # [B, L, d], [B, L]
    r = self.ln(r)
    mask = valid[:, None, None, :]  # [B, 1, 1, L]
    b, d = r.shape[0], r.shape[-1]
    if self.query == "learned":
      q = jnp.broadcast_to(self.queries[...], (b,) + self.queries.shape)  # [B, G, d]
      c, aux = attend(self.attn, q, r, mask=mask, train=train)  # [B, G, d]
      feature = self.merge(c.reshape(b, -1))  # [B, d]
    else:
      s, aux = jnp.broadcast_to(self.queries[...], (b, d)), {}  # [B, d]
      for _ in range(self.num_glimpses):
        c, a = attend(self.attn, s[:, None], r, mask=mask, train=train)  # [B, 1, d]
        s, aux = self.cell(s, c[:, 0])[0], _common.add_aux(aux, a)  # [B, d]
      feature = s
    return self.head(nnx.relu(feature)), aux  # [B, C]
