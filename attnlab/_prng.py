"""``threefry``: JAX's default PRNG (Threefry-2x32, 20 rounds), bit for bit, with a fusible hash.

jaxlib lowers the Threefry hash on CPU as a rolled five-step loop (to keep compile times short),
so XLA cannot fuse it with its consumers and dropout masks dominate small models. This
implementation computes the same hash as one unrolled chain of uint32 adds, rotations and xors that
XLA compiles into one vectorised loop (plain jnp, so it runs unchanged on GPU/TPU; timings:
docs/performance.md, "Fusible PRNG"). The bits pass an optimisation barrier, a request to
materialise them once rather than recompute the hash inside a consumer that broadcasts them.
XLA:CPU drops barriers before it fuses (pass ``cse_barrier_expander``), so there the hash may still
be fused into such a consumer.
Where a mask is read by gathers, the caller asks for it explicitly: ``kernels._dropout.dropout_weights(...,
once=True)`` (``materialize``, a two-element scatter XLA does not fuse through),
as the graph attention layers do.

Keys made with ``key(seed)`` give exactly the bits, splits and fold-ins of ``jax.random.key(seed)``
under JAX's default ``jax_threefry_partitionable=True`` (tests/test_prng.py checks this against
jax.random for many shapes and widths); with that flag off, or above 2**32 values per call, the
bits come from JAX's own implementation, so results never depend on which key type a run used.

    from attnlab import _prng as prng
    key = prng.key(0)                                  # a typed key, use it as any jax key
    mask = jax.random.bernoulli(key, 0.4, (2708, 64))  # == jax.random.bernoulli(jax.random.key(0), ...)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import random as jex_random

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_DEFAULT = "threefry2x32"


def _rotl(x: jax.Array, r: int) -> jax.Array:
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array):
  """The Threefry-2x32 block cipher, 20 rounds (Salmon et al. 2011), unrolled: (y1, y2) uint32."""
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = _rotl(x2, r) ^ x1
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def _as_threefry(key_data: jax.Array) -> jax.Array:
  return jax.random.wrap_key_data(key_data, impl=_DEFAULT)


def _seed(seed: jax.Array) -> jax.Array:
  return jax.random.key_data(jax.random.key(seed, impl=_DEFAULT))


def _split(key_data: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.key_data(jax.random.split(_as_threefry(key_data), shape))


def _fold_in(key_data: jax.Array, data: jax.Array) -> jax.Array:
  return jax.random.key_data(jax.random.fold_in(_as_threefry(key_data), data))


def _random_bits(key_data: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  size = math.prod(shape)
  if not jax.config.jax_threefry_partitionable or size >= 2 ** 32:
    return jax.random.bits(_as_threefry(key_data), shape, jnp.dtype(f"uint{bit_width}"))
  lo = lax.iota(np.uint32, size).reshape(shape)  # the counter; its high word is 0 below 2**32
  b1, b2 = threefry2x32(key_data[0], key_data[1], jnp.zeros_like(lo), lo)
  dtype = jnp.dtype(f"uint{bit_width}")
  if bit_width == 64:
    bits = (b1.astype(dtype) << np.uint64(32)) | b2.astype(dtype)
  else:
    bits = (b1 ^ b2).astype(dtype)
  # Ask for the bits once: left fusible, XLA may copy the ~100-op hash into a broadcasting consumer
  # and recompute it per output element. Honoured where the backend keeps barriers through fusion;
  # XLA:CPU removes them first (see the module docstring).
  return lax.optimization_barrier(bits)


IMPL = jex_random.define_prng_impl(
    key_shape=(2,), seed=_seed, split=_split, random_bits=_random_bits, fold_in=_fold_in,
    name="attnlab_threefry2x32", tag="afry")


def key(seed: int | jax.Array) -> jax.Array:
  """A typed PRNG key with the bits of ``jax.random.key(seed)`` and the fusible hash."""
  return jax.random.key(seed, impl=IMPL)
