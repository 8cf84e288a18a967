"""Normalisers: relevance scores s_ij -> weights α_ij over the keys j, for ONE head.

Every normaliser takes ``scores`` [Lq, Lk] and a boolean ``mask`` [Lq, Lk] (True = may attend)
and returns weights [Lq, Lk] that are exactly zero where masked. A row with nothing to attend to
gets all-zero weights, never NaN. Low-precision scores (float16, bfloat16) are normalised in float32
and the weights returned in the scores' dtype (``_dtypes.in_compute_dtype``).

| name        | α_ij                                                      | exact zeros | online (blocked) |
|-------------|-----------------------------------------------------------|-------------|------------------|
| `softmax`   | exp(s_ij) / Σ_j exp(s_ij)                                 | no          | yes              |
| `sparsemax` | [s_ij − τ_i]₊ with Σ_j α_ij = 1 (Martins & Astudillo 2016) | yes         | no               |
| `entmax15`  | [s_ij/2 − τ_i]₊² with Σ_j α_ij = 1 (Peters et al. 2019)    | yes         | no               |
| `sigmoid`   | σ(s_ij + b), b = −log(Lk) by default (Ramapuram et al. 2024) | no       | yes              |
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from attnlab import registry
from attnlab.kernels import _dtypes

Array = jax.Array


class Normalizer(NamedTuple):
  fn: Callable[..., Array]  # (scores [Lq, Lk], mask [Lq, Lk], **options) -> weights [Lq, Lk]
  online: bool = False  # has a streaming (blocked, FlashAttention-style) form


def _row_max(scores, mask):  # [Lq, Lk] -> [Lq, 1], 0 for rows with no valid entry
  m = jnp.max(jnp.where(mask, scores, -jnp.inf), axis=-1, keepdims=True)
  return jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))


def _rowdot(a: Array, b: Array) -> Array:
  """Σ_k a_k b_k over the last axis, kept: [..., 1]. A dot product, not sum(a * b): XLA:CPU runs the
  fused multiply-and-sum several times slower (docs/performance.md)."""
  return jnp.einsum("...k,...k->...", a, b)[..., None]


@jax.custom_jvp
def _softmax(scores: Array, mask: Array) -> Array:
  z = jnp.where(mask, scores - _row_max(scores, mask), -jnp.inf)
  e = jnp.exp(z)  # exactly 0 where masked
  total = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(total > 0, total, 1.0)


@_softmax.defjvp
def _softmax_jvp(primals, tangents):
  p = _softmax(*primals)
  t = tangents[0]
  return p, p * (t - _rowdot(p, t))  # 0 where masked (p = 0)


softmax = _dtypes.in_compute_dtype(_softmax)
softmax.__doc__ = "Softmax of scores [Lq, Lk] under mask [Lq, Lk]: weights exactly 0 where masked."


def _sorted_shifted(scores, mask, scale):
  """(scores − row max)·scale, clipped at −2 (masked → −2), sorted descending.

  Entries below (max − 1)·scale are outside the support of sparsemax/entmax (their threshold τ is
  at least max·scale − 1), so clipping them changes neither τ nor the output, and keeps the
  cumulative sums well conditioned for extreme logits.
  """
  z = jnp.where(mask, (scores - _row_max(scores, mask)) * scale, -2.0)
  z = jnp.maximum(z, -2.0)
  return z, -jnp.sort(-z, axis=-1)


def _sparsemax(scores, mask):
  z, zs = _sorted_shifted(scores, mask, 1.0)
  k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
  cumsum = jnp.cumsum(zs, axis=-1)
  support = 1.0 + k * zs > cumsum  # [Lq, Lk], a prefix of True
  k_star = jnp.sum(support, axis=-1, keepdims=True)  # [Lq, 1] >= 1
  tau = (jnp.take_along_axis(cumsum, k_star - 1, axis=-1) - 1.0) / k_star.astype(z.dtype)
  p = jnp.maximum(z - tau, 0.0)
  return jnp.where(mask, p, 0.0) * jnp.any(mask, axis=-1, keepdims=True)


def _entmax15(scores, mask):
  z, zs = _sorted_shifted(scores, mask, 0.5)
  k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
  mean = jnp.cumsum(zs, axis=-1) / k
  mean_sq = jnp.cumsum(zs * zs, axis=-1) / k
  delta = (1.0 - k * (mean_sq - mean * mean)) / k
  tau = mean - jnp.sqrt(jnp.maximum(delta, 0.0))  # [Lq, Lk]: τ if the support were the top k
  k_star = jnp.sum(tau <= zs, axis=-1, keepdims=True)  # [Lq, 1]
  tau_star = jnp.take_along_axis(tau, k_star - 1, axis=-1)
  p = jnp.square(jnp.maximum(z - tau_star, 0.0))
  return jnp.where(mask, p, 0.0) * jnp.any(mask, axis=-1, keepdims=True)


def _simplex_jvp(forward, slope):
  """custom_jvp for a sparse map onto the simplex whose Jacobian is diag(g) − g gᵀ/Σg, g = slope(p)
  (Martins & Astudillo 2016; Peters et al. 2019): exact, and no autodiff through the sort."""
  f = jax.custom_jvp(forward)

  @f.defjvp
  def _jvp(primals, tangents):
    scores, mask = primals
    p = f(scores, mask)
    g = slope(p)  # [Lq, Lk], 0 outside the support
    total = jnp.sum(g, axis=-1, keepdims=True)
    return p, g * tangents[0] - g * _rowdot(g, tangents[0]) / jnp.where(total > 0, total, 1.0)

  return f


sparsemax = _dtypes.in_compute_dtype(_simplex_jvp(_sparsemax, lambda p: (p > 0).astype(p.dtype)))
sparsemax.__doc__ = "Sparsemax of scores [Lq, Lk] under mask [Lq, Lk]: exact zeros outside the support."
entmax15 = _dtypes.in_compute_dtype(_simplex_jvp(_entmax15, jnp.sqrt))
entmax15.__doc__ = "1.5-entmax of scores [Lq, Lk] under mask [Lq, Lk]: exact zeros outside the support."


@_dtypes.in_compute_dtype
def sigmoid(scores: Array, mask: Array, bias: float | Array | None = None) -> Array:
  if bias is None:
    bias = -jnp.log(jnp.asarray(scores.shape[-1], scores.dtype))
  return jnp.where(mask, jax.nn.sigmoid(scores + bias), 0.0)


registry.register("normalizer", "softmax", Normalizer(softmax, online=True))
registry.register("normalizer", "sparsemax", Normalizer(sparsemax))
registry.register("normalizer", "entmax15", Normalizer(entmax15))
registry.register("normalizer", "sigmoid", Normalizer(sigmoid, online=True))


def get_normalizer(name: str) -> Normalizer:
  member = registry.get("normalizer", name)
  return member if isinstance(member, Normalizer) else Normalizer(member)
