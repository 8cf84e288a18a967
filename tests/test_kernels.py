"""The shared contract of every registered score × normalizer × target (in every floating dtype),
and NumPy references."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import _prng as prng
from attnlab import kernels, registry
from attnlab.kernels import _dropout
from tests import reference

SCORES = registry.names("score")
NORMALIZERS = registry.names("normalizer")
TARGETS = registry.names("target")
B, LQ, LK, H, HKV, D, DV = 2, 3, 5, 4, 2, 6, 3


def _inputs(seed=0, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (B, LQ, H, D), dtype)  # [B, Lq, H, D]
  k = jax.random.normal(kk, (B, LK, HKV, D), dtype)  # [B, Lk, Hkv, D]
  v = jax.random.normal(kv, (B, LK, HKV, DV), dtype)  # [B, Lk, Hkv, Dv]
  return q, k, v


def _params(score, dtype=jnp.float32):
  p = kernels.init_params(score, jax.random.key(7), D)
  return jax.tree.map(lambda x: x.astype(dtype), p)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("normalizer", NORMALIZERS)
@pytest.mark.parametrize("score", SCORES)
def test_contract(score, normalizer, target):
  q, k, v = _inputs()
  params = _params(score)
  # prng.key: the same bits as jax.random.key, several times faster to compile (tests/test_prng.py).
  kw = dict(score=score, normalizer=normalizer, target=target, params=params,
            rng=prng.key(3), causal=True, return_weights=True)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(q, k, v):
    return kernels.attention(q, k, v, **kw)

  out, w = f(q, k, v)
  chex.assert_shape(out, (B, LQ, H, DV))
  chex.assert_shape(w, (B, H, LQ, LK))
  chex.assert_tree_all_finite((out, w))
  with jax.disable_jit():
    out_eager, w_eager = kernels.attention(q, k, v, **kw)
  np.testing.assert_allclose(out, out_eager, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(w, w_eager, rtol=1e-5, atol=1e-5)
  f(q + 1.0, k, v)  # same shapes, new values: no retrace


@pytest.mark.parametrize("normalizer", NORMALIZERS)
@pytest.mark.parametrize("score", SCORES)
def test_soft_matches_numpy_reference(score, normalizer):
  q, k, v = _inputs(seed=1)
  params = _params(score)
  mask = np.array(jax.random.bernoulli(jax.random.key(5), 0.7, (B, H, LQ, LK)))
  mask[0, 0, 1] = False  # one row with nothing to attend to
  out, w = kernels.attention(q, k, v, score=score, normalizer=normalizer, params=params,
                             mask=jnp.asarray(mask), return_weights=True)
  np_params = jax.tree.map(np.asarray, params)
  ref_out, ref_w = reference.attention(np.asarray(q), np.asarray(k), np.asarray(v), mask, score,
                                       normalizer, np_params)
  np.testing.assert_allclose(w, ref_w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out)[0, 1, 0], 0.0)
  if normalizer == "softmax":
    np.testing.assert_allclose(np.asarray(w).sum(-1)[mask.any(-1)], 1.0, rtol=1e-5)


@pytest.mark.parametrize("score", [s for s in SCORES if kernels.get_score(s).init is not None])
def test_per_head_params_give_each_head_its_own_score(score):
  q, k, v = _inputs(seed=2)
  per_head = kernels.init_params(score, jax.random.key(11), D, num_heads=H)
  out = kernels.attention(q, k, v, score=score, params=per_head)
  for h in range(H):
    p_h = jax.tree.map(lambda x: np.asarray(x[h]), per_head)
    ref, _ = reference.attention(np.asarray(q)[:, :, h:h + 1], np.asarray(k)[:, :, [h // 2]],
                                 np.asarray(v)[:, :, [h // 2]], np.ones((B, 1, LQ, LK), bool),
                                 score, "softmax", p_h)
    np.testing.assert_allclose(out[:, :, h], ref[:, :, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_scaled_dot_equals_jax_nn(kv_heads, causal):
  kq, kk, kv, km = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(kq, (2, 7, 4, 8))
  k = jax.random.normal(kk, (2, 7, kv_heads, 8))
  v = jax.random.normal(kv, (2, 7, kv_heads, 8))
  mask = jax.random.bernoulli(km, 0.8, (2, 1, 7, 7)).at[..., 0].set(True)
  ours = kernels.attention(q, k, v, mask=mask, causal=causal)
  theirs = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalizer", NORMALIZERS)
@pytest.mark.parametrize("score", SCORES)
def test_gradients_match_finite_differences(score, normalizer):
  with jax.enable_x64(True):
    q, k, v = _inputs(seed=4, dtype=jnp.float64)
    q, k, v = q[:1, :, :2], k[:1, :, :1], v[:1, :, :1]  # B=1, H=2, Hkv=1 keeps it quick
    params = _params(score, jnp.float64)
    mask = jnp.ones((1, 1, LQ, LK), bool).at[..., 0, -1].set(False)

    def f(q, k, v, params):
      return kernels.attention(q, k, v, score=score, normalizer=normalizer, params=params, mask=mask)

    jax.test_util.check_grads(f, (q, k, v, params), order=1, modes=("rev",), atol=1e-5, rtol=1e-5,
                                eps=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_length_one_and_cross_shapes(target):
  q = jax.random.normal(jax.random.key(0), (1, 1, 2, 4))  # one query
  k = jax.random.normal(jax.random.key(1), (1, 1, 2, 4))  # one key
  v = jax.random.normal(jax.random.key(2), (1, 1, 2, 9))  # v_dim != dim
  out = kernels.attention(q, k, v, target=target, rng=jax.random.key(0))
  np.testing.assert_allclose(out, v, rtol=1e-6)  # the only key gets all the weight


# Every score x normalizer x target (dense, and blocked where it applies) in each floating dtype,
# at logits of order ±1e4, with zero query/key vectors, fully masked rows and length 1. One jitted
# program per (dtype, score) holds all its combinations, since compile time dominates at these
# shapes (and XLA:CPU's legacy emitters compile them in about half the time).
EVERY_DTYPE = ("float16", "bfloat16", "float32")
BLOCKED = {("softmax", "soft"), ("sigmoid", "soft")}
COMPILE = {"xla_cpu_use_fusion_emitters": False} if jax.default_backend() == "cpu" else {}


def _extreme_inputs(dtype):
  rs = np.random.RandomState(6)  # NumPy: no compile for the inputs
  q = rs.standard_normal((B, LQ, 2, D)) * 1e4 / np.sqrt(D)  # logits ~ ±1e4; 2 heads, 1 kv head
  k, v = rs.standard_normal((B, LK, 1, D)), rs.standard_normal((B, LK, 1, DV))
  q[0, 1], k[1, 2] = 0.0, 0.0  # a zero query (all heads) and a zero key
  mask = np.ones((B, 2, LQ, LK), bool)
  mask[0, :, 0] = mask[1, 1, 2] = False  # fully masked rows
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v)) + (mask,)


@pytest.mark.parametrize("dtype", EVERY_DTYPE)
@pytest.mark.parametrize("score", SCORES)
def test_every_combination_is_finite_with_zero_masked_rows(score, dtype):
  q, k, v, mask = _extreme_inputs(dtype)
  combos = [(n, t, impl) for n in NORMALIZERS for t in TARGETS
            for impl in (("dense", "blocked") if (n, t) in BLOCKED else ("dense",))]

  @functools.partial(jax.jit, compiler_options=COMPILE)
  def run(q, k, v, params):
    results = {}
    for n, t, impl in combos:
      def loss(q, k, v, params):
        kw = dict(score=score, normalizer=n, target=t, params=params, rng=prng.key(3), impl=impl)
        out = kernels.attention(q, k, v, mask=mask, return_weights=impl == "dense", **kw)
        out, w = out if impl == "dense" else (out, None)
        one = kernels.attention(q[:1, :1], k[:1, :1], v[:1, :1], **kw)  # length 1
        sq = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)))
        return sq(out) + sq(one), (out, w, one)

      grads, aux = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, params)
      results[n, t, impl] = aux + (grads,)
    return results

  for (n, t, impl), (out, w, one, grads) in run(q, k, v, _params(score, dtype)).items():
    where = f"{score}/{n}/{t}/{impl} in {dtype}"
    assert out.dtype == one.dtype == jnp.dtype(dtype), where
    chex.assert_tree_all_finite((out, w, one, grads), custom_message=where)
    out = np.asarray(out, np.float32)
    np.testing.assert_array_equal(out[0, 0], 0.0, err_msg=where)  # fully masked rows
    np.testing.assert_array_equal(out[1, 2, 1], 0.0, err_msg=where)
    if w is not None:
      assert w.dtype == jnp.dtype(dtype), where
      w = np.asarray(w, np.float32)
      np.testing.assert_array_equal(w[0, :, 0], 0.0, err_msg=where)
      np.testing.assert_array_equal(w[1, 1, 2], 0.0, err_msg=where)
    if n != "sigmoid":  # the only key gets all the weight
      np.testing.assert_array_equal(np.asarray(one, np.float32)[0, 0],
                                    np.repeat(np.asarray(v, np.float32)[0, :1, 0], 2, 0), err_msg=where)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_weights_are_the_float32_weights_rounded_once(dtype):
  """Low-precision inputs are normalised in float32 (as jax.nn.dot_product_attention): the weights
  equal the float32 weights of the same inputs up to their one rounding, over 300 keys (float16
  sums, and bfloat16 counts past 256, would be off by many ulps)."""
  rs = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rs.standard_normal(s), dtype)
             for s in ((1, 4, 1, 8), (1, 300, 1, 8), (1, 300, 1, 2)))
  q = q * jnp.asarray([[[[0.01]], [[0.1]], [[1.0]], [[10.0]]]], dtype)  # from wide to narrow support

  @functools.partial(jax.jit, compiler_options=COMPILE)
  def run(q, k, v):
    return {n: kernels.attention(q, k, v, score="dot", normalizer=n, return_weights=True)
            for n in NORMALIZERS}

  low, ref = run(q, k, v), run(*(x.astype(jnp.float32) for x in (q, k, v)))
  eps, sub = (float(getattr(jnp.finfo(dtype), a)) for a in ("eps", "smallest_subnormal"))
  for n in NORMALIZERS:
    (out, w), (ref_out, ref_w) = low[n], ref[n]
    assert out.dtype == w.dtype == jnp.dtype(dtype), n
    np.testing.assert_allclose(np.asarray(w, np.float32), ref_w, rtol=eps, atol=sub, err_msg=n)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, rtol=0,
                               atol=4 * eps * float(jnp.max(jnp.abs(ref_out))), err_msg=n)


def test_weight_dropout_at_rate_one_gives_zeros_and_zero_gradients_in_every_dtype():
  for dtype in EVERY_DTYPE:
    w = jnp.full((3, 4), 0.25, dtype)
    drop = lambda w: _dropout.dropout_weights(w, prng.key(0), 1.0)
    grad = jax.grad(lambda w: jnp.sum(drop(w).astype(jnp.float32)))(w)
    np.testing.assert_array_equal(np.asarray(drop(w), np.float32), 0.0, err_msg=dtype)
    np.testing.assert_array_equal(np.asarray(grad, np.float32), 0.0, err_msg=dtype)  # not NaN
