"""LayerNorm over the last axis whose row sums are matrix-vector products.

``LayerNorm`` is ``flax.nnx.LayerNorm`` (same parameters ``scale`` [d] and ``bias`` [d], same
defaults, flax's output to float rounding) whose statistics and backward-pass row sums are written
as products with a [d] vector of 1/d: XLA:CPU runs a fused ``sum(a * b, axis=-1)`` over rows of
d = 128 several times slower than the same sum as a dot (docs/performance.md, "LayerNorm's row
sums"). Masks, other reduction axes, cross-device statistics and dtypes other than float32 go to
flax's own code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


def _row_mean(x: Array) -> Array:
  """mean over the last axis as a matrix-vector product: [..., d] -> [...]."""
  return jnp.einsum("...d,d->...", x, jnp.full(x.shape[-1:], 1.0 / x.shape[-1], x.dtype))


def _rows(a: Array, x: Array) -> Array:
  """a[..., None] * x, written as a product so that its transpose w.r.t. a is a dot: [...], [..., d]."""
  return jnp.einsum("...,...d->...d", a, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
  """(x − mean) / sqrt(var + ε) · scale + bias over the last axis; x [..., d], scale/bias [d]."""
  return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
  mean = _row_mean(x)  # [...]
  var = jnp.maximum(0.0, _row_mean(x * x) - mean * mean)  # flax's fast variance
  r = jax.lax.rsqrt(var + epsilon)  # [...]
  xhat = _rows(r, x - mean[..., None])  # [..., d]
  return xhat * scale + bias, (xhat, r, scale)


def _bwd(epsilon, res, dy):  # pylint: disable=unused-argument
  xhat, r, scale = res
  g = dy * scale  # [..., d]
  # dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂)), every row sum a dot
  dx = _rows(r, g - _row_mean(g)[..., None] - _rows(_row_mean(g * xhat), xhat))
  rows = tuple(range(dy.ndim - 1))
  return dx, jnp.sum(dy * xhat, axis=rows), jnp.sum(dy, axis=rows)


layer_norm.defvjp(_forward, _bwd)


class LayerNorm(nnx.LayerNorm):
  """``nnx.LayerNorm`` with ``layer_norm``'s row sums for the common case (last axis, no mask,
  float32)."""

  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    last = lambda axes: tuple(np.atleast_1d(axes)) in ((-1,), (x.ndim - 1,))
    plain = (mask is None and self.axis_name is None and self.scale is not None
             and self.bias is not None and last(self.reduction_axes) and last(self.feature_axes))
    if plain:
      xs, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
      if all(a.dtype == jnp.float32 for a in (xs, scale, bias)):  # flax keeps float32 statistics
        return layer_norm(xs, scale, bias, self.epsilon)
    return super().__call__(x, mask=mask)
