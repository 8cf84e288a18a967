"""Vectorisable elementwise approximations used by the attention kernels.

XLA's CPU ``exp`` and ``tanh`` are slow (well under a billion elements per second here), and the
blocked kernels evaluate one ``exp`` per (query, key) pair and additive/concat scores one ``tanh``
per (query, key, feature) triple. These replacements are plain arithmetic (multiply–add, floor,
integer shift, bit cast), which XLA fuses and vectorises on every backend, so the same code runs
unchanged on CPU, GPU and TPU.

| function  | method                                                 | max error (fp32, measured)       |
|-----------|--------------------------------------------------------|----------------------------------|
| `exp2(x)` | 2^⌊x⌋ · p(x − ⌊x⌋), p degree-5 minimax on [0, 1)       | relative 2e-7 (~2 ulp)           |
| `exp(x)`  | exp2(x · log2 e)                                       | relative 1.1e-6 (|x| ≤ 20), 4e-6 |
|           |                                                        | (|x| ≤ 80)                       |
| `tanh(x)` | x · P(x²) / Q(x²), degree 13/6 (Eigen ``ptanh_float``) | absolute 4e-7 (CPU and GPU)      |

``exp2``/``exp`` flush to 0 at and below 2^-126 (about 1e-38) and give inf from 2^128; NaN propagates.
The errors are checked against float64 NumPy in tests/test_blocked.py. Gradients use the exact
derivative formulas evaluated with the approximations (custom_jvp), not autodiff through the
polynomials.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

LOG2E = math.log2(math.e)
# Near-minimax fit of 2^f on [0, 1) for relative error (degree 5, fp32 coefficients, lowest first),
# constrained to p(0) = 1 so that 2^0 = 1 exactly (the row maximum of a softmax gets weight 1).
_EXP2_COEFFS = (1.0, 0.6931512951850891, 0.24016444385051727, 0.05579991266131401,
                0.009017029777169228, 0.0018671302823349833)
# tanh(x) ≈ x·P(x²)/Q(x²) on |x| ≤ _TANH_CLAMP (Eigen, GenericPacketMathFunctions.h).
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
_TANH_CLAMP = 7.90531110763549805


def _horner(coeffs, x):
  acc = jnp.asarray(coeffs[-1], x.dtype)
  for c in coeffs[-2::-1]:
    acc = acc * x + jnp.asarray(c, x.dtype)
  return acc


def _exp2_f32(x: Array) -> Array:
  """2^x for float32 x; 0 below -126, inf above 128."""
  xc = jnp.clip(x, -127.0, 127.99999)
  n = jnp.floor(xc)
  p = _horner(_EXP2_COEFFS, xc - n)  # 2^(x - n) in [1, 2)
  scale = jax.lax.bitcast_convert_type((n.astype(jnp.int32) + 127) << 23, jnp.float32)  # 2^n
  out = p * scale
  out = jnp.where(x < -126.0, 0.0, out)
  return jnp.where(x >= 128.0, jnp.inf, out)


def _as_f32(fn):
  def wrapped(x):
    x = jnp.asarray(x)
    if x.dtype == jnp.float32:
      return fn(x)
    return fn(x.astype(jnp.float32)).astype(x.dtype)
  return wrapped


@jax.custom_jvp
def exp2(x: Array) -> Array:
  """Fast 2^x (relative error ≤ 2e-7); computed in float32, returned in x's dtype."""
  return _as_f32(_exp2_f32)(x)


@exp2.defjvp
def _exp2_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  y = exp2(x)
  return y, y * jnp.asarray(math.log(2.0), y.dtype) * t


def exp(x: Array) -> Array:
  """Fast e^x = exp2(x·log2 e) (relative error ≤ 1.1e-6 for |x| ≤ 20; the rounding of x·log2 e)."""
  x = jnp.asarray(x)
  return exp2(x * jnp.asarray(LOG2E, x.dtype))


def _tanh_f32(x: Array) -> Array:
  xc = jnp.clip(x, -_TANH_CLAMP, _TANH_CLAMP)
  x2 = xc * xc
  return xc * _horner(_TANH_P, x2) / _horner(_TANH_Q, x2)


@jax.custom_jvp
def tanh(x: Array) -> Array:
  """Fast tanh (absolute error ≤ 4e-7); computed in float32, returned in x's dtype."""
  return _as_f32(_tanh_f32)(x)


@tanh.defjvp
def _tanh_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  y = tanh(x)
  return y, (1.0 - y * y) * t
