"""``encoder``: Transformer encoder classifier (self-attention), family ``classifier``.

    tokens [B, L] (Embed) or features [B, L, F] (Dense)  ->  + learned positions  -> [B, L, d]
    [CLS] prepended when pooling="cls"                                             -> [B, 1+L, d]
    num_layers x Block(self-attention over non-PAD keys)                           -> [B, L', d]
    pool: mean over non-PAD positions, or the CLS position                         -> [B, d]
    Dense                                                                          -> logits [B, C]

Every attention layer holds the model's ``attention`` spec (all its fields are honoured);
``dropout_rate`` is the residual dropout. With target="hard", ``aux`` holds ``log_prob`` and ``entropy`` [B]
(summed over layers, heads and non-PAD queries) and losses adds the REINFORCE term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import validate
from attnlab.attention_spec import AttentionSpec
from attnlab.models import _common
from attnlab.models.transformer import Embedder, Stack, stack_options

POOLINGS = ("mean", "cls")


@_common.register_model("encoder")
class EncoderClassifier(nnx.Module):
  family = "classifier"

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, attention: AttentionSpec, d_model: int = 64,
               num_layers: int = 2, mlp_dim: int | None = None, qkv_features: int | None = None,
               dropout_rate: float = 0.0,
               pooling: str = "mean", entropy_bonus: float = 0.01, baseline_decay: float = 0.9):
    _common.check_spec(self.name, spec, "num_classes", "seq_len")
    self.pooling = validate.choice(f"model {self.name!r}", "pooling", pooling, POOLINGS)
    opts = stack_options(self.name, d_model=d_model, num_layers=num_layers, mlp_dim=mlp_dim,
                         qkv_features=qkv_features, dropout_rate=dropout_rate,
                         attention=attention)
    extra = 1 if pooling == "cls" else 0
    self.embed = Embedder(d_model, spec["seq_len"] + extra, vocab_size=spec.get("vocab_size"),
                          input_dim=None if "vocab_size" in spec else spec["input_dim"], rngs=rngs)
    self.cls = nnx.Param(jnp.zeros((1, 1, d_model))) if pooling == "cls" else nnx.data(None)
    self.encoder = Stack(rngs=rngs, **opts)
    self.head = nnx.Linear(d_model, spec["num_classes"], rngs=rngs)
    _common.reinforce_state(self, attention.target, entropy_bonus, baseline_decay)

  def __call__(self, batch: dict, *, train: bool) -> tuple[jax.Array, dict]:
    x = jnp.asarray(batch["inputs"])  # [B, L] int or [B, L, F] float
    h, valid = self.embed(x, offset=1 if self.cls is not None else 0)  # [B, L, d], [B, L]
    if self.cls is not None:
      cls = self.cls[...] + self.embed.pos(jnp.arange(1))[None]  # [1, 1, d] at position 0
      cls = jnp.broadcast_to(cls, (h.shape[0],) + cls.shape[1:])  # [B, 1, d]
      h = jnp.concatenate([cls, h], axis=1)  # [B, 1+L, d]
      valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)  # [B, 1+L]
    mask = valid[:, None, None, :]  # [B, 1, 1, L'] keys that may be attended
    h, aux = self.encoder(h, mask=mask, query_mask=valid, train=train)  # [B, L', d]
    if self.cls is not None:
      pooled = h[:, 0]  # [B, d]
    else:
      w = valid.astype(h.dtype)[..., None]  # [B, L, 1]
      pooled = jnp.sum(h * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)  # [B, d]
    return self.head(pooled), aux  # [B, C]
