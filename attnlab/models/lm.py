"""``lm``: decoder-only causal language model (GPT style), family ``lm``.

    tokens [B, L] -> Embed + learned positions             -> [B, L, d]
    num_layers x Block(causal self-attention, MLP)         -> [B, L, d]
    LayerNorm, Dense                                       -> logits [B, L, V] (next token at each position)

Every attention layer holds the model's ``attention`` spec (all its fields are honoured); PAD keys
are masked besides the causal mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.attention_spec import AttentionSpec
from attnlab.models import _common
from attnlab.models.transformer import Embedder, Stack, stack_options


@_common.register_model("lm")
class CausalLM(nnx.Module):
  family = "lm"

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, attention: AttentionSpec, d_model: int = 64,
               num_layers: int = 2, mlp_dim: int | None = None, qkv_features: int | None = None,
               dropout_rate: float = 0.0,
               entropy_bonus: float = 0.01, baseline_decay: float = 0.9):
    _common.check_spec(self.name, spec, "vocab_size", "seq_len")
    opts = stack_options(self.name, d_model=d_model, num_layers=num_layers, mlp_dim=mlp_dim,
                         qkv_features=qkv_features, dropout_rate=dropout_rate,
                         attention=attention)
    self.embed = Embedder(d_model, spec["seq_len"], vocab_size=spec["vocab_size"], rngs=rngs)
    self.decoder = Stack(rngs=rngs, **opts)
    self.head = nnx.Linear(d_model, spec["vocab_size"], rngs=rngs)
    _common.reinforce_state(self, attention.target, entropy_bonus, baseline_decay)

  def __call__(self, batch: dict, *, train: bool) -> tuple[jax.Array, dict]:
    x = jnp.asarray(batch["inputs"])  # [B, L]
    h, valid = self.embed(x)  # [B, L, d], [B, L]
    h, aux = self.decoder(h, mask=valid[:, None, None, :], is_causal=True, query_mask=valid,
                          train=train)  # [B, L, d]
    return self.head(h), aux  # [B, L, V]
