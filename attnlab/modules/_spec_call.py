"""The kernel call of a layer that holds an ``AttentionSpec`` (MultiHeadAttention, ImageSelfAttention):
the spec's target with attention-weight dropout when it applies, one PRNG key from the dropout and
sampling streams, and the score's parameters read from their nnx.Params."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from attnlab import kernels
from attnlab.attention_spec import AttentionSpec

Array = jax.Array


def one_key(keys: list[Array]) -> Array | None:
  """The kernel's key from the keys drawn for dropout and/or sampling, in that order (None if none)."""
  if not keys:
    return None
  if len(keys) == 1:
    return keys[0]
  return jax.random.fold_in(keys[1], jax.random.bits(keys[0]))


def attend(spec: AttentionSpec, q: Array, k: Array, v: Array, score_params: Any, *, use_dropout: bool,
           sample: bool, rng: Array | None, return_weights: bool, mask: Array | None = None,
           causal: bool = False) -> tuple:
  """``kernels.attention`` of ``spec`` on q [B, Lq, H, D], k [B, Lk, Hkv, D], v [B, Lk, Hkv, Dv]:
  (out [B, Lq, H, Dv], then weights [B, H, Lq, Lk] if ``return_weights``, then the target's aux)."""
  target, target_kwargs = spec.target, dict(spec.target_kwargs)
  if use_dropout:
    target = kernels.with_weight_dropout(spec.target)
    target_kwargs["dropout_rate"] = spec.dropout
  params = None if score_params is None else jax.tree.map(
      lambda p: p[...], score_params, is_leaf=lambda t: isinstance(t, nnx.Variable))
  return kernels.attention(
      q, k, v, score=spec.score, normalizer=spec.normalizer, target=target, mask=mask, causal=causal,
      params=params, rng=rng, return_weights=return_weights, return_aux=True,
      deterministic=not (use_dropout or sample), normalizer_kwargs=dict(spec.normalizer_kwargs),
      target_kwargs=target_kwargs, impl=spec.impl)
