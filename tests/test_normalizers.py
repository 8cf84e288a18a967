"""Normalisers: closed-form cases, exact zeros, simplex invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import kernels, registry
from attnlab.kernels import normalizers

ALL = jnp.ones((1, 3), bool)


def test_sparsemax_hand_computed():
  # sorted z = (1, .5, -1): support {1, 2}, τ = (1 + .5 − 1) / 2 = .25
  p = normalizers.sparsemax(jnp.array([[1.0, 0.5, -1.0]]), ALL)
  np.testing.assert_allclose(p, [[0.75, 0.25, 0.0]], atol=1e-7)
  assert p[0, 2] == 0.0  # an exact zero, not a small number


def test_entmax15_hand_computed():
  # z/2 = (.5, 0): (.5 − τ)² + τ² = 1  =>  τ = (1 − √7) / 4
  tau = (1 - np.sqrt(7)) / 4
  p = normalizers.entmax15(jnp.array([[1.0, 0.0]]), jnp.ones((1, 2), bool))
  np.testing.assert_allclose(p, [[(0.5 - tau) ** 2, tau ** 2]], rtol=1e-6)
  # z/2 = (1.5, 0, −.5): only the first survives, τ = .5
  p = normalizers.entmax15(jnp.array([[3.0, 0.0, -1.0]]), ALL)
  np.testing.assert_array_equal(p, [[1.0, 0.0, 0.0]])


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sparse_normalizers_sum_to_one_with_exact_zeros(name):
  fn = kernels.get_normalizer(name).fn
  s = 3.0 * jax.random.normal(jax.random.key(0), (64, 20))
  p = np.asarray(fn(s, jnp.ones_like(s, bool)))
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
  assert (p >= 0).all() and (p == 0).sum() > 64  # many exact zeros at this spread
  # the argmax always keeps positive weight, and the order of scores is kept
  rows = np.arange(64)
  assert (p[rows, np.argmax(np.asarray(s), -1)] > 0).all()


def test_softmax_rows_sum_to_one_and_respect_mask():
  s = jax.random.normal(jax.random.key(1), (8, 6))
  mask = jax.random.bernoulli(jax.random.key(2), 0.6, (8, 6)).at[:, 0].set(True)
  p = np.asarray(normalizers.softmax(s, mask))
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  assert (p[~np.asarray(mask)] == 0).all()


def test_sigmoid_default_bias_is_minus_log_length():
  s = jax.random.normal(jax.random.key(3), (4, 10))
  p = normalizers.sigmoid(s, jnp.ones_like(s, bool))
  np.testing.assert_allclose(p, 1 / (1 + np.exp(-(np.asarray(s) - np.log(10)))), rtol=1e-6)
  p0 = normalizers.sigmoid(s, jnp.ones_like(s, bool), bias=0.0)
  np.testing.assert_allclose(p0, 1 / (1 + np.exp(-np.asarray(s))), rtol=1e-6)


def test_sigmoid_bias_reaches_it_through_attention():
  q = jax.random.normal(jax.random.key(0), (1, 2, 1, 4))
  _, w = kernels.attention(q, q, q, normalizer="sigmoid", normalizer_kwargs={"bias": 1.5},
                           return_weights=True)
  s = np.einsum("qd,kd->qk", np.asarray(q)[0, :, 0], np.asarray(q)[0, :, 0]) / 2.0
  np.testing.assert_allclose(w[0, 0], 1 / (1 + np.exp(-(s + 1.5))), rtol=1e-5)


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "entmax15", "sigmoid"])
def test_every_normalizer_is_registered(name):
  assert name in registry.names("normalizer")
