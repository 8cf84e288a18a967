"""attnlab._prng: the Random123 known answers, and the exact bits, splits and fold-ins of jax.random."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab import _prng as prng

# Threefry-2x32-20 known-answer vectors (Random123's kat_vectors; the same ones JAX tests):
# (key, counter) -> output, all as pairs of uint32.
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key,counter,expected", KAT)
def test_threefry_known_answers(key, counter, expected):
  u = lambda v: jnp.asarray(v, jnp.uint32)
  out = jax.jit(prng.threefry2x32)(u(key[0]), u(key[1]), u(counter[0]), u(counter[1]))
  assert tuple(int(o) for o in out) == expected


@pytest.mark.parametrize("seed", [0, 2**31 + 5])
@pytest.mark.parametrize("shape", [(3,), (5, 7), (257, 64)])
def test_same_bits_as_jax_default_key(seed, shape):
  ours, theirs = prng.key(seed), jax.random.key(seed)
  for dtype in (jnp.uint8, jnp.uint16, jnp.uint32):
    np.testing.assert_array_equal(jax.random.bits(ours, shape, dtype), jax.random.bits(theirs, shape, dtype))
  np.testing.assert_array_equal(jax.random.bernoulli(ours, 0.4, shape),
                                jax.random.bernoulli(theirs, 0.4, shape))
  np.testing.assert_array_equal(jax.random.normal(ours, shape), jax.random.normal(theirs, shape))
  np.testing.assert_array_equal(jax.random.categorical(ours, jnp.zeros(shape + (5,))),
                                jax.random.categorical(theirs, jnp.zeros(shape + (5,))))


def test_split_fold_in_and_traced_use_match_jax():
  ours, theirs = prng.key(3), jax.random.key(3)
  np.testing.assert_array_equal(jax.random.key_data(jax.random.split(ours, (2, 3))),
                                jax.random.key_data(jax.random.split(theirs, (2, 3))))
  np.testing.assert_array_equal(jax.random.key_data(jax.random.fold_in(ours, 11)),
                                jax.random.key_data(jax.random.fold_in(theirs, 11)))
  draw = jax.jit(jax.vmap(lambda k: jax.random.uniform(jax.random.split(k)[1], (4, 6))))
  np.testing.assert_array_equal(draw(jax.random.split(ours, 5)), draw(jax.random.split(theirs, 5)))
  assert jax.random.key_impl(jax.random.split(ours)[0]) == prng.IMPL


def test_flax_dropout_masks_match_jax_default_key():
  x = jnp.ones((16, 32))
  ours = nnx.Dropout(0.6, rngs=nnx.Rngs(dropout=prng.key(1)))(x, deterministic=False)
  theirs = nnx.Dropout(0.6, rngs=nnx.Rngs(dropout=jax.random.key(1)))(x, deterministic=False)
  np.testing.assert_array_equal(ours, theirs)
  assert 0.3 < float(jnp.mean(ours > 0)) < 0.5  # keep rate 0.4 (512 draws: 4 s.e. = 0.087)


def test_bits_are_uniform():
  bits = np.asarray(jax.random.bits(prng.key(0), (1 << 16,), jnp.uint32))
  counts = np.bincount(bits >> 28, minlength=16)  # top 4 bits: 16 equally likely cells
  chi2 = float(((counts - 4096.0) ** 2 / 4096.0).sum())
  assert chi2 < 37.7  # chi-square, 15 degrees of freedom, p = 0.001
  assert len(np.unique(bits)) > 65000  # no short cycles
