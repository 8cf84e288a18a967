"""Per-dtype numerics of the kernels: the dtype reductions run in, and floors chosen per dtype.

Low-precision inputs (float16, bfloat16) have their norms, softmax statistics and sums computed in
float32 and returned in the input dtype, as ``jax.nn.dot_product_attention`` does; float32 and
float64 inputs compute in their own dtype (unchanged). Floors come from ``jnp.finfo`` so that they
stay representable (float16: smallest normal 6.1e-5, largest value 65504).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def compute_dtype(dtype) -> np.dtype:
  """The dtype reductions of ``dtype`` inputs run in: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def upcast(x: Array) -> Array:
  """x in its compute dtype (x itself for float32 and float64)."""
  return x.astype(compute_dtype(x.dtype))


def in_compute_dtype(fn):
  """A normaliser ``fn(scores, mask, **options)`` run in the compute dtype of ``scores`` and
  returning weights in the scores' dtype (a no-op wrapper for float32/float64 scores)."""
  @functools.wraps(fn)
  def wrapped(scores, mask, *args, **options):
    scores = jnp.asarray(scores)
    return fn(upcast(scores), mask, *args, **options).astype(scores.dtype)
  return wrapped


def sq_norm_floor(dtype) -> float:
  """Floor of a squared L2 norm before ``rsqrt``: 1e-12, raised to 1/max where the gradient at a
  zero vector, 1/√floor, would otherwise exceed √max of ``dtype`` (float16: floor 1.5e-5, gradient
  ≤ 256, so it stays finite after the products of the backward pass)."""
  return max(1e-12, 1.0 / float(jnp.finfo(dtype).max))


def divisor_floor(dtype) -> float:
  """The smallest positive normal number of ``dtype``: a floor for divisors that may reach zero."""
  return float(jnp.finfo(dtype).tiny)
