"""``lm``: decoder-only causal language model (GPT style), family ``lm``.

    tokens [B, L] -> Embed + learned positions             -> [B, L, d]
    num_layers x Block(causal self-attention, MLP)         -> [B, L, d]
    LayerNorm, Dense                                       -> logits [B, L, V] (next token at each position)

The attention category comes from the options; PAD keys are masked besides the causal mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.models import _common
from attnlab.models.transformer import Embedder, Stack, transformer_options


@_common.register_model("lm")
class CausalLM(nnx.Module):
  family = "lm"
  supports = {"score": "any", "normalizer": "any", "target": "any", "head_mode": ("split", "copy"),
              "head_merge": ("concat", "mean")}

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, d_model: int = 64, num_heads: int = 4,
               num_layers: int = 2, mlp_dim: int | None = None, score: str = "scaled_dot",
               normalizer: str = "softmax", target: str = "soft", head_mode: str = "split",
               head_merge: str = "concat", num_kv_heads: int | None = None,
               dropout_rate: float = 0.0, entropy_bonus: float = 0.01, baseline_decay: float = 0.9):
    _common.check_spec(self.name, spec, "vocab_size", "seq_len")
    opts = transformer_options(self.name, d_model=d_model, num_heads=num_heads,
                               num_layers=num_layers, mlp_dim=mlp_dim, score=score,
                               normalizer=normalizer, target=target, head_mode=head_mode,
                               head_merge=head_merge, num_kv_heads=num_kv_heads,
                               dropout_rate=dropout_rate)
    self.embed = Embedder(d_model, spec["seq_len"], vocab_size=spec["vocab_size"], rngs=rngs)
    self.decoder = Stack(rngs=rngs, **opts)
    self.head = nnx.Linear(d_model, spec["vocab_size"], rngs=rngs)
    _common.reinforce_state(self, target, entropy_bonus, baseline_decay)

  def __call__(self, batch: dict, *, train: bool) -> tuple[jax.Array, dict]:
    x = jnp.asarray(batch["inputs"])  # [B, L]
    h, valid = self.embed(x)  # [B, L, d], [B, L]
    h, aux = self.decoder(h, mask=valid[:, None, None, :], is_causal=True, query_mask=valid,
                          train=train)  # [B, L, d]
    return self.head(h), aux  # [B, L, V]
