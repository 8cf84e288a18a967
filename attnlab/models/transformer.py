"""Shared Transformer pieces: input embedding, pre-LayerNorm blocks, one attention call.

    h = embed(x) + pos                       # tokens (nnx.Embed) or features (Dense), learned positions
    h = h + Drop(SelfAttn(LN h))             # attnlab MultiHeadAttention of the model's AttentionSpec
    h = h + Drop(CrossAttn(LN h, memory))    # decoder blocks only
    h = h + Drop(MLP(LN h))                  # Dense(d -> mlp) - GELU - Dense(mlp -> d)

The model's ``AttentionSpec`` (score, normalizer, target, heads, kwargs, attention-weight dropout,
impl) is handed to every ``attnlab.modules.MultiHeadAttention`` unchanged; ``dropout_rate`` here is
the residual dropout (Drop). No attention maths here. Every attention call returns its REINFORCE
terms (``log_prob``/``entropy`` [B], only for the ``hard`` target).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import modules, validate
from attnlab.attention_spec import AttentionSpec
from attnlab.data.base import PAD
from attnlab.models import _common
from attnlab.models._norm import LayerNorm

Array = jax.Array


def attention_layer(d_model: int, attention: AttentionSpec, *, rngs: nnx.Rngs,
                    in_kv_features: int | None = None,
                    qkv_features: int | None = None) -> modules.MultiHeadAttention:
  """A MultiHeadAttention d_model -> d_model holding the spec ``attention``; q/k/v are projected to
  ``qkv_features`` (default d_model: heads of d_model / H when split, d_model when copied)."""
  return modules.MultiHeadAttention(attention.num_heads, d_model, qkv_features or d_model, d_model,
                                    in_kv_features=in_kv_features, attention=attention, rngs=rngs)


def attend(layer: modules.MultiHeadAttention, x: Array, memory: Array | None = None, *,
           mask: Array | None = None, query_mask: Array | None = None, is_causal: bool = False,
           train: bool) -> tuple[Array, dict]:
  """One attention call: out [B, Lq, d] and the REINFORCE terms ({"log_prob", "entropy"} [B])."""
  need_weights = layer.stochastic_target  # entropy bonus of sampled attention
  out = layer(x, memory, mask=mask, is_causal=is_causal, deterministic=not train,
              return_weights=need_weights, return_aux=True, sow_weights=_common.sow_enabled())
  weights = out[1] if need_weights else None  # [B, H, Lq, Lk]
  return out[0], _common.hard_aux(out[-1], weights, query_mask)


class Embedder(nnx.Module):
  """Tokens [B, L] (int) or features [B, L, F] (float) -> [B, L, d] plus learned positions."""

  def __init__(self, d_model: int, max_len: int, *, vocab_size: int | None = None,
               input_dim: int | None = None, rngs: nnx.Rngs):
    if (vocab_size is None) == (input_dim is None):
      raise ValueError("Embedder: give exactly one of vocab_size (tokens) or input_dim (features)")
    self.tokens = vocab_size is not None
    self.embed = (nnx.Embed(vocab_size, d_model, rngs=rngs) if self.tokens
                  else nnx.Linear(input_dim, d_model, rngs=rngs))
    self.pos = nnx.Embed(max_len, d_model, rngs=rngs)
    self.max_len = max_len

  def __call__(self, x: Array, offset: int = 0) -> tuple[Array, Array]:
    """Returns h [B, L, d] and the valid-position mask [B, L] (tokens != PAD; all True for features)."""
    length = x.shape[1]
    if offset + length > self.max_len:
      raise ValueError(f"Embedder: sequence of length {length} (offset {offset}) is longer than the "
                       f"model's max length {self.max_len} (from the task spec)")
    h = self.embed(x) + self.pos(jnp.arange(offset, offset + length))[None]  # [B, L, d]
    valid = (x != PAD) if self.tokens else jnp.ones(x.shape[:2], jnp.bool_)  # [B, L]
    return h, valid


class Mlp(nnx.Module):
  def __init__(self, d_model: int, mlp_dim: int, *, rngs: nnx.Rngs):
    self.up = nnx.Linear(d_model, mlp_dim, rngs=rngs)
    self.down = nnx.Linear(mlp_dim, d_model, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.down(nnx.gelu(self.up(x)))  # [B, L, d]


class Block(nnx.Module):
  """Pre-LN Transformer block: self-attention, optional cross-attention, MLP (residuals)."""

  def __init__(self, d_model: int, mlp_dim: int, *, cross: bool, dropout_rate: float,
               attention: AttentionSpec, rngs: nnx.Rngs, qkv_features: int | None = None):
    self.ln_self = LayerNorm(d_model, rngs=rngs)
    self.self_attn = attention_layer(d_model, attention, rngs=rngs, qkv_features=qkv_features)
    if cross:
      self.ln_cross = LayerNorm(d_model, rngs=rngs)
      self.cross_attn = attention_layer(d_model, attention, rngs=rngs, qkv_features=qkv_features)
    else:
      self.ln_cross, self.cross_attn = nnx.data(None), nnx.data(None)
    self.ln_mlp = LayerNorm(d_model, rngs=rngs)
    self.mlp = Mlp(d_model, mlp_dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x: Array, *, mask: Array | None, query_mask: Array | None, train: bool,
               is_causal: bool = False, memory: Array | None = None,
               memory_mask: Array | None = None) -> tuple[Array, dict]:
    """x [B, L, d]; mask [B, 1, L, L] (self); memory [B, Lm, d] with memory_mask [B, 1, L, Lm]."""
    det = not train
    a, aux = attend(self.self_attn, self.ln_self(x), mask=mask, query_mask=query_mask,
                    is_causal=is_causal, train=train)
    x = x + self.drop(a, deterministic=det)  # [B, L, d]
    if self.cross_attn is not None:
      a, aux_c = attend(self.cross_attn, self.ln_cross(x), memory, mask=memory_mask,
                        query_mask=query_mask, train=train)
      x = x + self.drop(a, deterministic=det)
      aux = _common.add_aux(aux, aux_c)
    x = x + self.drop(self.mlp(self.ln_mlp(x)), deterministic=det)
    return x, aux


class Stack(nnx.Module):
  """``num_layers`` Blocks and a final LayerNorm."""

  def __init__(self, d_model: int, num_layers: int, mlp_dim: int, *, cross: bool = False,
               dropout_rate: float, attention: AttentionSpec, rngs: nnx.Rngs,
               qkv_features: int | None = None):
    self.blocks = nnx.List([Block(d_model, mlp_dim, cross=cross, dropout_rate=dropout_rate,
                                  attention=attention, rngs=rngs, qkv_features=qkv_features)
                            for _ in range(num_layers)])
    self.ln_out = LayerNorm(d_model, rngs=rngs)

  def __call__(self, x: Array, **kwargs) -> tuple[Array, dict]:
    aux: dict = {}
    for block in self.blocks:
      x, a = block(x, **kwargs)
      aux = _common.add_aux(aux, a)
    return self.ln_out(x), aux  # [B, L, d]


def stack_options(model: str, *, d_model: int, num_layers: int, mlp_dim: int | None,
                  dropout_rate: float, attention: AttentionSpec, qkv_features: int | None = None) -> dict:
  """The Stack keyword arguments of a Transformer model (its sizes checked; the spec as given).
  ``qkv_features`` (default d_model) sets the attention width, hence the head dimension D_k
  (qkv_features / num_heads for split heads) apart from d_model."""
  for arg, value in (("d_model", d_model), ("num_layers", num_layers)):
    validate.positive_int(f"model {model!r}", arg, value)
  if qkv_features is not None:
    validate.positive_int(f"model {model!r}", "qkv_features", qkv_features)
    if attention.head_mode == "split":
      validate.divides(f"model {model!r}", "model.attention.num_heads", attention.num_heads,
                       "qkv_features", qkv_features)
  return dict(d_model=d_model, num_layers=num_layers, mlp_dim=mlp_dim or 4 * d_model,
              dropout_rate=dropout_rate, attention=attention, qkv_features=qkv_features)
