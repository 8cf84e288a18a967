"""The blocked (online-softmax) path: equal to the dense path in outputs and gradients, refusals,
fast-math error bounds, and bounded memory of the compiled program.

Tolerances (fp32): outputs |blocked − dense| ≤ 2e-5 + 1e-4·|dense|; gradients ≤ 1e-4 + 1e-3·|dense|
(relative to the gradient's largest entry). Measured errors are ~1e-6 (outputs) and ~1e-5 (gradients):
summation order differs, and exp/tanh are the fastmath approximations.
"""

import importlib
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import kernels, registry
from attnlab.kernels import _fastmath as fastmath
from attnlab.kernels.scores import Score

B, LQ, LK, H, HKV, D, DV = 2, 37, 45, 4, 2, 8, 5  # ragged for blocks of 16; GQA groups of 2
BLOCK = 16
CUSTOM = "test_blocked_neg_l2"


def _custom_score():
  """A score registered from outside attnlab: −t·|q − k|², t a learnable temperature in pairwise."""
  def pairwise(params, fq, fk):  # [Lq, F], [Lk, F] -> [Lq, Lk]
    return -params["t"] * jnp.sum(jnp.square(fq[:, None, :] - fk[None, :, :]), axis=-1)

  return Score(pairwise=pairwise, project_q=lambda p, q: q @ p["W"],
               init=lambda rng, dim: {"W": jax.random.normal(rng, (dim, dim)) / math.sqrt(dim),
                                      "t": jnp.asarray(0.3, jnp.float32)})


@pytest.fixture(scope="module", autouse=True)
def custom_score():
  registry.register("score", CUSTOM, _custom_score())
  yield
  registry.unregister("score", CUSTOM)


SCORES = sorted(registry.names("score")) + [CUSTOM]


@pytest.fixture(scope="module")
def data():
  rs = np.random.RandomState(0)  # NumPy: no compile for the inputs
  f32 = lambda *shape: jnp.asarray(rs.standard_normal(shape), jnp.float32)
  q, k, v = f32(B, LQ, H, D), f32(B, LK, HKV, D), f32(B, LK, HKV, DV)  # [B, L, H(kv), D]
  mask = rs.uniform(size=(B, H, LQ, LK)) < 0.7
  mask[1, 2, 5] = False  # a row with nothing to attend to
  key_pad = np.ones((B, 1, 1, LK), bool)
  key_pad[0, ..., 30:] = False
  cot = f32(B, LQ, H, DV)  # output cotangent
  return q, k, v, jnp.asarray(mask), jnp.asarray(key_pad), cot


MODES = [("none", False), ("mask", False), ("key_pad", True)]  # key padding [B, 1, 1, Lk] + causal


def _modes(score, normalizer):
  """Mask modes tested for one (score, normalizer): all three for scaled_dot/softmax, else one,
  rotating so that every score meets two modes and every mode meets several scores (compile time)."""
  if (score, normalizer) == ("scaled_dot", "softmax"):
    return MODES
  return [MODES[(SCORES.index(score) + (normalizer == "sigmoid")) % len(MODES)]]


def _out_and_grads(impl, score, normalizer):
  """jit: for each of the modes, the output and its vjp (wrt q, k, v, params) at the cotangent."""
  @jax.jit
  def f(q, k, v, params, masks, cot):
    results = []
    for m, causal in _modes(score, normalizer):
      fn = lambda q, k, v, p: kernels.attention(q, k, v, score=score, normalizer=normalizer, params=p,
                                                mask=masks[m], causal=causal, impl=impl,
                                                block_size=BLOCK)
      out, vjp = jax.vjp(fn, q, k, v, params)
      results.append((out, vjp(cot)))
    return results

  return f


def _assert_close(blocked, dense, atol, rtol):
  for b, d in zip(jax.tree.leaves(blocked), jax.tree.leaves(dense)):
    b, d = np.asarray(b), np.asarray(d)
    scale = max(1.0, float(np.abs(d).max()))
    np.testing.assert_allclose(b, d, atol=atol * scale, rtol=rtol)


@pytest.mark.parametrize("normalizer", ["softmax", "sigmoid"])
@pytest.mark.parametrize("score", SCORES)
def test_blocked_matches_dense(data, score, normalizer):
  """Every score × normalizer × {no mask | mask (with an empty row) | key padding + causal}, GQA."""
  q, k, v, mask, key_pad, cot = data
  params = kernels.init_params(score, jax.random.key(1), D)
  masks = {"none": None, "mask": mask, "key_pad": key_pad}
  dense = _out_and_grads("dense", score, normalizer)(q, k, v, params, masks, cot)
  blocked = _out_and_grads("blocked", score, normalizer)(q, k, v, params, masks, cot)
  for (m, _), (ob, gb), (od, gd) in zip(_modes(score, normalizer), blocked, dense):
    chex.assert_tree_all_finite((ob, gb))
    np.testing.assert_allclose(ob, od, atol=2e-5, rtol=1e-4)
    _assert_close(gb, gd, atol=1e-4, rtol=1e-3)
    if m == "mask":
      np.testing.assert_array_equal(np.asarray(ob)[1, 5, 2], 0.0)  # the empty row stays zero


def test_blocked_per_head_params_bias_and_block_shapes(data):
  """Per-head params, a sigmoid bias given as an option (and its gradient), unequal blocks."""
  q, k, v, mask, _, cot = data
  params = kernels.init_params("additive", jax.random.key(2), D, num_heads=H)

  def run(impl, bias):
    fn = lambda q, p, b: kernels.attention(q, k, v, score="additive", normalizer="sigmoid", params=p,
                                           mask=mask, causal=True, impl=impl, block_size=(8, 32),
                                           normalizer_kwargs={"bias": b})
    out, vjp = jax.vjp(fn, q, params, bias)
    return out, vjp(cot)

  bias = jnp.asarray(-1.5)
  ob, gb = jax.jit(run, static_argnums=0)("blocked", bias)
  od, gd = jax.jit(run, static_argnums=0)("dense", bias)
  np.testing.assert_allclose(ob, od, atol=2e-5, rtol=1e-4)
  _assert_close(gb, gd, atol=1e-4, rtol=1e-3)
  assert abs(float(gd[2])) > 1e-3  # the bias gradient is really tested


@pytest.mark.parametrize("lq,lk,bq,bk", [(37, 45, 16, 16), (64, 64, 16, 8), (50, 30, 8, 16),
                                         (96, 100, 32, 24)])
def test_causal_plan_splits_blocks_at_the_diagonal(lq, lk, bq, bk):
  """Each block (i, j) is skipped (no pair visible), plain (every pair visible: no causal mask) or on
  the diagonal, by query i >= key j on its indices; forward (k_hi, k_full) and backward (q_lo,
  q_full) bounds agree."""
  from attnlab.kernels._blocked_passes import Plan  # noqa: PLC0415
  plan = Plan(lq, lk, bq, bk, causal=True)
  for i in range(plan.nq):
    for j in range(plan.nk):
      vis = np.arange(i * plan.bq, (i + 1) * plan.bq)[:, None] >= np.arange(j * plan.bk, (j + 1) * plan.bk)
      expected = "skip" if not vis.any() else "plain" if vis.all() else "diagonal"
      fwd = "skip" if j >= int(plan.k_hi(i)) else "plain" if j < int(plan.k_full(i)) else "diagonal"
      bwd = "skip" if i < int(plan.q_lo(j)) else "diagonal" if i < int(plan.q_full(j)) else "plain"
      assert fwd == bwd == expected, (i, j, fwd, bwd, expected)


def test_default_block_follows_the_pairwise_intermediate():
  """(1024, 512) pairs for dot-product scores; (256, 128) when pairwise forms [Bq, Bk, A=64]; one
  key block when the keys fit in a query block; square blocks when causal."""
  from attnlab.kernels import _blocked as blocked, scores  # noqa: PLC0415
  for name, expected in [("scaled_dot", (1024, 512)), ("general", (1024, 512)), ("additive", (256, 128)),
                         ("concat", (256, 128))]:
    p = kernels.init_params(name, jax.random.key(0), 64)
    assert blocked.default_block(scores.get_score(name).pairwise, p, 64, jnp.float32) == expected, name
  p = kernels.init_params(CUSTOM, jax.random.key(0), 16)  # [Bq, Bk, 16] differences -> 2^17 pairs
  assert blocked.default_block(scores.get_score(CUSTOM).pairwise, p, 16, jnp.float32) == (512, 256)
  p = kernels.init_params(CUSTOM, jax.random.key(0), 256)  # 256 per pair -> 8192 pairs
  assert blocked.default_block(scores.get_score(CUSTOM).pairwise, p, 256, jnp.float32) == (128, 64)
  dot, add = scores.get_score("scaled_dot").pairwise, scores.get_score("additive").pairwise
  p = kernels.init_params("additive", jax.random.key(0), 64)
  # keys no longer than a query block: one key block; longer: the usual (2b, b)
  assert blocked.default_block(dot, None, 64, jnp.float32, lk=1024) == (1024, 1024)
  assert blocked.default_block(dot, None, 64, jnp.float32, lk=700) == (1024, 700)
  assert blocked.default_block(dot, None, 64, jnp.float32, lk=1025) == (1024, 512)
  assert blocked.default_block(add, p, 64, jnp.float32, lk=256) == (256, 256)
  assert blocked.default_block(add, p, 64, jnp.float32, lk=300) == (256, 128)
  # causal: square blocks (about half of them skipped), also where the keys would fit one block
  assert blocked.default_block(dot, None, 64, jnp.float32, lk=1024, causal=True) == (512, 512)
  assert blocked.default_block(add, p, 64, jnp.float32, lk=4096, causal=True) == (128, 128)


def test_default_blocks_one_key_block_match_dense(data):
  """Default blocks at short lengths: one key block of all Lk = 45 keys (not a multiple of 8), no
  online rescaling; with a mask (and its empty row), causal and GQA, outputs and gradients = dense."""
  q, k, v, mask, _, cot = data

  @jax.jit
  def out_and_grads(q, k, v):
    results = []
    for impl in ("blocked", "dense"):
      fn = lambda q, k, v: kernels.attention(q, k, v, mask=mask, causal=True, impl=impl)
      out, vjp = jax.vjp(fn, q, k, v)
      results.append((out, vjp(cot)))
    return results

  (ob, gb), (od, gd) = out_and_grads(q, k, v)
  np.testing.assert_allclose(ob, od, atol=2e-5, rtol=1e-4)
  _assert_close(gb, gd, atol=1e-4, rtol=1e-3)
  np.testing.assert_array_equal(np.asarray(ob)[1, 5, 2], 0.0)  # the empty row stays zero


def test_auto_is_dense_for_short_and_non_online(data):
  q, k, v, mask, _, _ = data
  for normalizer in ["softmax", "sparsemax", "entmax15"]:
    a = kernels.attention(q, k, v, normalizer=normalizer, mask=mask)
    d = kernels.attention(q, k, v, normalizer=normalizer, mask=mask, impl="dense")
    np.testing.assert_array_equal(a, d)
  # long enough for auto to pick blocked: agrees with dense, and sparsemax still runs (dense)
  n = math.isqrt(importlib.import_module("attnlab.kernels.attention").AUTO_BLOCKED_MIN_PAIRS)
  ql = jax.random.normal(jax.random.key(3), (1, n, 1, 4))
  a = kernels.attention(ql, ql, ql, causal=True)
  d = kernels.attention(ql, ql, ql, causal=True, impl="dense")
  np.testing.assert_allclose(a, d, atol=2e-5, rtol=1e-4)
  s = kernels.attention(ql, ql, ql, normalizer="sparsemax", causal=True)
  np.testing.assert_allclose(jnp.sum(s), jnp.sum(kernels.attention(
      ql, ql, ql, normalizer="sparsemax", causal=True, impl="dense")), rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(normalizer="sparsemax"), dict(normalizer="entmax15"),
                                dict(target="hard", rng=jax.random.key(0)),
                                dict(target="hard_st", rng=jax.random.key(0)),
                                dict(return_weights=True),
                                dict(normalizer="sigmoid", normalizer_kwargs={"bias": jnp.zeros((37, 45))})])
def test_blocked_refuses_what_it_cannot_do(data, kw):
  q, k, v, *_ = data
  with pytest.raises(ValueError,
                     match=r"impl='blocked'.*valid impl values: \('auto', 'dense', 'blocked', 'ring'\)"):
    kernels.attention(q, k, v, impl="blocked", **kw)
  kernels.attention(q, k, v, impl="auto", **kw)  # auto falls back to dense


def test_bad_impl_and_block_size(data):
  q, k, v, *_ = data
  with pytest.raises(ValueError,
                     match=r"impl must be one of \('auto', 'dense', 'blocked', 'ring'\), got 'fast'"):
    kernels.attention(q, k, v, impl="fast")
  with pytest.raises(ValueError, match="block_size must be a positive int"):
    kernels.attention(q, k, v, impl="blocked", block_size=(16, 0))


def test_fastmath_error_bounds():
  x = np.linspace(-125.0, 127.99, 1_000_001, dtype=np.float32)
  ref = np.exp2(x.astype(np.float64))
  assert np.max(np.abs(np.asarray(fastmath.exp2(x), np.float64) - ref) / ref) < 2e-7
  x = np.linspace(-20.0, 20.0, 1_000_001, dtype=np.float32)
  ref = np.exp(x.astype(np.float64))
  assert np.max(np.abs(np.asarray(fastmath.exp(x), np.float64) - ref) / ref) < 1.2e-6
  x = np.linspace(-12.0, 12.0, 1_000_001, dtype=np.float32)
  assert np.max(np.abs(np.asarray(fastmath.tanh(x), np.float64) - np.tanh(x.astype(np.float64)))) < 4e-7
  edge = np.asarray(fastmath.exp2(jnp.array([-jnp.inf, -200.0, 200.0, jnp.inf, 0.0])))
  np.testing.assert_array_equal(edge, [0.0, 0.0, np.inf, np.inf, 1.0])
  np.testing.assert_array_equal(np.asarray(fastmath.tanh(jnp.array([-jnp.inf, 0.0, jnp.inf]))), [-1, 0, 1])
  jax.test_util.check_grads(fastmath.exp, (jnp.array([-3.0, 0.5, 2.0]),), order=1, rtol=1e-2)
  jax.test_util.check_grads(fastmath.tanh, (jnp.array([-3.0, 0.5, 2.0]),), order=1, rtol=1e-2)


def _temp_bytes(score, n, causal):
  q = jax.ShapeDtypeStruct((1, n, 1, 64), jnp.float32)
  params = kernels.init_params(score, jax.random.key(0), 64)

  def loss(q, k, v, p):
    return jnp.sum(kernels.attention(q, k, v, score=score, params=p, causal=causal, impl="auto"))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  return grad.lower(q, q, q, params).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("score,causal", [("scaled_dot", True), ("additive", False)])
def test_fwd_bwd_memory_is_linear_in_length(score, causal):
  """Compiled fwd+bwd (one head, d=64): temporaries below one N×N fp32 matrix, growing linearly in N."""
  n = 4096
  temp, temp_2n = _temp_bytes(score, n, causal), _temp_bytes(score, 2 * n, causal)
  # Set by the block size (additive: 256·128·64 tanh block and its gradient) plus O(N) vectors:
  # ~10-20 MB on CPU, ~35-43 MB on an H200 (XLA:GPU keeps more buffers). One N×N fp32 matrix is
  # 64 MB at N=4096 and dense additive needs N·N·A·4 = 4 GB; anything quadratic would grow ×4.
  assert temp < n * n * 4, temp
  assert temp_2n < 2.5 * temp, (temp, temp_2n)
