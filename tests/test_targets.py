"""Targets: hard sampling matches α, argmax at evaluation, REINFORCE log-prob, straight-through."""

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import kernels, registry

Q = jax.random.normal(jax.random.key(0), (1, 2, 1, 4))  # [B, Lq, H, D]
K = jax.random.normal(jax.random.key(1), (1, 5, 1, 4))
V = jax.random.normal(jax.random.key(2), (1, 5, 1, 3))


def _alpha():
  _, w = kernels.attention(Q, K, V, return_weights=True)
  return np.asarray(w)[0, 0]  # [Lq, Lk]


def test_hard_outputs_are_value_rows_with_alpha_frequencies():
  n = 20000
  sample = jax.jit(jax.vmap(lambda r: kernels.attention(Q, K, V, target="hard", rng=r,
                                                         return_aux=True)))
  out, aux = sample(jax.random.split(jax.random.key(9), n))
  index = np.asarray(aux["index"])[:, 0, 0]  # [n, Lq]
  values = np.asarray(V)[0, :, 0]  # [Lk, Dv]
  np.testing.assert_allclose(np.asarray(out)[:, 0, :, 0], values[index], rtol=1e-6)
  alpha = _alpha()
  for i in range(alpha.shape[0]):
    freq = np.bincount(index[:, i], minlength=alpha.shape[1]) / n
    # 5 standard errors of a binomial proportion: fails with probability < 1e-5 per entry
    np.testing.assert_array_less(np.abs(freq - alpha[i]), 5 * np.sqrt(alpha[i] * (1 - alpha[i]) / n) + 1e-4)
  np.testing.assert_allclose(np.asarray(aux["log_prob"])[:, 0, 0],
                             np.log(alpha[np.arange(2)[None], index]), rtol=1e-5)


def test_hard_deterministic_is_argmax_and_needs_no_rng():
  out, aux = kernels.attention(Q, K, V, target="hard", deterministic=True, return_aux=True)
  j = _alpha().argmax(-1)
  np.testing.assert_array_equal(np.asarray(aux["index"])[0, 0], j)
  np.testing.assert_allclose(np.asarray(out)[0, :, 0], np.asarray(V)[0, j, 0])


def test_hard_log_prob_gives_reinforce_gradient():
  # ∇ E_j~α[f(j)] = E[f(j) ∇ log α_j]; with f = one-hot of index 0 this is ∇ α_0 exactly.
  n = 20000

  def surrogate(q, r):
    _, aux = kernels.attention(q, K, V, target="hard", rng=r, return_aux=True)
    reward = (aux["index"][0, 0, 0] == 0).astype(jnp.float32)
    return jax.lax.stop_gradient(reward) * aux["log_prob"][0, 0, 0]
  g = jax.jit(jax.vmap(jax.grad(surrogate), in_axes=(None, 0)))(Q, jax.random.split(jax.random.key(4), n))
  estimate = np.asarray(g).mean(0)
  exact = jax.grad(lambda q: kernels.attention(q, K, V, return_weights=True)[1][0, 0, 0, 0])(Q)
  np.testing.assert_allclose(estimate, exact, atol=0.02)


def test_hard_st_is_one_hot_forward_with_soft_relaxation_gradient():
  t = 0.7
  out = kernels.attention(Q, K, V, target="hard_st", rng=jax.random.key(5))
  rows = np.asarray(V)[0, :, 0]
  for i in range(2):  # each output is exactly one value row
    assert np.isclose(np.abs(rows - np.asarray(out)[0, i, 0]).sum(-1), 0, atol=1e-6).any()

  def st(q):
    z = kernels.attention(q, K, V, target="hard_st", deterministic=True,
                          target_kwargs={"temperature": t})
    return jnp.sum(z * V[:, :2])

  def relaxed(q):  # written out: softmax(log α / t) @ v with α the softmax attention weights
    s = jnp.einsum("bqhd,bkhd->bhqk", q, K) / 2.0
    log_alpha = jax.nn.log_softmax(s, -1)
    w = jax.nn.softmax(log_alpha / t, -1)
    z = jnp.einsum("bhqk,bkhd->bqhd", w, V)
    return jnp.sum(z * V[:, :2])

  np.testing.assert_allclose(jax.grad(st)(Q), jax.grad(relaxed)(Q), rtol=1e-4, atol=1e-6)


def test_with_weight_dropout_returns_a_target_and_registers_nothing():
  """The wrapper is a Target (the same object per wrapped target: one compile), adds no registry
  name, and is unbiased for soft: E[z] is the soft output; hard keeps a proper distribution."""
  before = registry.names("target")
  drop = kernels.with_weight_dropout("soft")
  assert isinstance(drop, kernels.Target) and drop.stochastic
  assert kernels.with_weight_dropout("soft") is drop and kernels.with_weight_dropout("hard") is not drop
  assert registry.names("target") == before
  clean = kernels.attention(Q, K, V)
  f = jax.jit(jax.vmap(lambda r: kernels.attention(Q, K, V, target=drop, rng=r,
                                                   target_kwargs={"dropout_rate": 0.5})))
  outs = f(jax.random.split(jax.random.key(5), 4000))
  assert not np.allclose(outs[0], clean)
  np.testing.assert_allclose(outs.mean(0), clean, atol=0.05)
  same = kernels.attention(Q, K, V, target=drop, deterministic=True, target_kwargs={"dropout_rate": 0.5})
  np.testing.assert_allclose(same, clean, atol=1e-6)
  hard = kernels.with_weight_dropout("hard")
  z, aux = kernels.attention(Q, K, V, target=hard, rng=jax.random.key(6), return_aux=True,
                             target_kwargs={"dropout_rate": 0.5})
  rows = np.asarray(V)[0, :, 0]  # [Lk, Dv]: each output row is one value row
  assert all(np.any(np.all(np.isclose(rows, r, atol=1e-6), axis=1)) for r in np.asarray(z)[0, :, 0])
  assert np.all(np.asarray(aux["log_prob"]) <= 0)
