"""attnlab.kernels._segments (the speed layer behind kernels.segment_softmax): scatter-free segment
sums against plain NumPy, with gradients."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attnlab import kernels
from attnlab.kernels import _dropout
from attnlab.kernels import _segments as segments

N_OUT, N_IN, L = 9, 7, 40


def _entries(seed=0):
  rng = np.random.default_rng(seed)
  out = rng.integers(0, N_OUT, L)
  out[:14] = 2  # one row with many entries (overflow chunks); rows 7 and 8 stay empty below
  out[out >= 7] = 3
  return out, rng.integers(0, N_IN, L)


@pytest.fixture(scope="module", params=[None, 2, 4])
def inc(request):
  out, inn = _entries()
  return segments.incidence(out, inn, N_OUT, N_IN, width=request.param)


def _np_segment_sum(x, index, n):
  total = np.zeros((n,) + x.shape[1:], np.float64)
  np.add.at(total, index, x)
  return total


def test_incidence_lists_every_entry_once_per_grouping(inc):
  out, inn = _entries()
  for slot, row, owner, n, group, other in ((inc.out_slot, inc.out_row, inc.out_owner, N_OUT, out, inn),
                                            (inc.in_slot, inc.in_row, inc.in_owner, N_IN, inn, out)):
    slot, row, owner = map(np.asarray, (slot, row, owner))
    chunk_group = np.concatenate([np.arange(n), owner])  # the row each chunk belongs to
    real = slot < L
    assert sorted(slot[real].tolist()) == list(range(L))
    np.testing.assert_array_equal(group[slot[real]], np.broadcast_to(chunk_group[:, None], slot.shape)[real])
    np.testing.assert_array_equal(other[slot[real]], row[real])
  assert (inc.num_out, inc.num_in) == (N_OUT, N_IN)


def test_sums_max_softmax_and_take_match_numpy(inc):
  out, inn = _entries()
  rng = np.random.default_rng(1)
  x = rng.normal(size=(L, 3)).astype(np.float32)
  np.testing.assert_allclose(segments.segment_sum(jnp.asarray(x), inc), _np_segment_sum(x, out, N_OUT),
                             atol=1e-5)
  np.testing.assert_allclose(segments.segment_sum(jnp.asarray(x), inc, "in"),
                             _np_segment_sum(x, inn, N_IN), atol=1e-5)
  expect_max = np.full((N_OUT, 3), -np.inf)
  np.maximum.at(expect_max, out, x)
  np.testing.assert_array_equal(segments.segment_max(jnp.asarray(x), inc), expect_max)
  alpha = np.asarray(kernels.segment_softmax(jnp.asarray(x), inc))
  e = np.exp(x - expect_max[out])
  np.testing.assert_allclose(alpha, e / _np_segment_sum(e, out, N_OUT)[out], rtol=1e-5)
  nodes = rng.normal(size=(N_IN, 2, 3)).astype(np.float32)
  np.testing.assert_array_equal(segments.take(jnp.asarray(nodes), inc, "in"), nodes[inn])


def test_gather_sum_and_sparse_matmul_match_numpy(inc):
  out, inn = _entries()
  rng = np.random.default_rng(2)
  table = rng.normal(size=(N_IN, 2, 3)).astype(np.float32)  # [n_in, H, F]
  w = rng.normal(size=(L, 2)).astype(np.float32)  # per-head weights
  got = segments.gather_sum(jnp.asarray(table), jnp.asarray(w), inc)
  np.testing.assert_allclose(got, _np_segment_sum(w[:, :, None] * table[inn], out, N_OUT), atol=1e-5)
  assert np.all(np.asarray(got)[7:] == 0)  # rows without entries
  dense = np.zeros((N_OUT, N_IN))
  np.add.at(dense, (out, inn), w[:, 0])
  mat = rng.normal(size=(N_IN, 5)).astype(np.float32)
  sparse = segments.SparseMatrix(jnp.asarray(w[:, 0]), inc)
  np.testing.assert_allclose(segments.matmul(sparse, jnp.asarray(mat)), dense @ mat, atol=1e-5)


def test_gradients_match_finite_differences(inc):
  rng = np.random.default_rng(3)
  table = jnp.asarray(rng.normal(size=(N_IN, 2, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(L, 2)), jnp.float32)
  s = jnp.asarray(rng.normal(size=(L, 2)), jnp.float32)
  nodes = jnp.asarray(rng.normal(size=(N_OUT, 2)), jnp.float32)
  tol = dict(order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)
  check_grads(lambda t, w: jnp.sin(segments.gather_sum(t, w, inc)), (table, w), **tol)
  check_grads(lambda s: jnp.sin(kernels.segment_softmax(s, inc)), (s,), **tol)
  check_grads(lambda s: jnp.sin(segments.segment_sum(s, inc, "in")), (s,), **tol)
  check_grads(lambda x: jnp.sin(segments.take(x, inc, "out")), (nodes,), **tol)


def test_gradients_equal_autodiff_of_plain_segment_ops_under_vmap(inc):
  """The hand-written reverse rules, batched over a leading axis as the runner batches seeds."""
  out, inn = _entries()
  rng = np.random.default_rng(4)
  table = jnp.asarray(rng.normal(size=(3, N_IN, 2, 3)), jnp.float32)  # [S, n_in, H, F]
  s = jnp.asarray(rng.normal(size=(3, L, 2)), jnp.float32)

  def fast(t, s):
    a = kernels.segment_softmax(s, inc)
    return jnp.sum(jnp.tanh(segments.gather_sum(t, a, inc)))

  def plain(t, s):
    m = jax.ops.segment_max(s, out, N_OUT)
    e = jnp.exp(s - jax.lax.stop_gradient(m)[out])
    a = e / jax.ops.segment_sum(e, out, N_OUT)[out]
    return jnp.sum(jnp.tanh(jax.ops.segment_sum(a[:, :, None] * t[inn], out, N_OUT)))

  got = jax.jit(jax.vmap(jax.grad(fast, (0, 1))))(table, s)
  want = jax.vmap(jax.grad(plain, (0, 1)))(table, s)
  for g, w_ in zip(got, want):
    np.testing.assert_allclose(g, w_, atol=1e-5)


def test_materialize_is_the_identity():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(jax.jit(_dropout.materialize)(x), x)
  np.testing.assert_array_equal(jax.jit(_dropout.materialize)(x > 5), x > 5)
  assert _dropout.materialize(jnp.zeros((0, 3))).shape == (0, 3)


def test_bad_incidence_is_refused_by_name():
  with pytest.raises(ValueError, match="in_index must lie in"):
    segments.incidence([0, 1], [0, 5], 2, 3)
  with pytest.raises(ValueError, match="one length"):
    segments.incidence([0, 1], [0], 2, 3)
  with pytest.raises(ValueError, match="width"):
    segments.incidence([0], [0], 1, 1, width=0)
  inc = segments.incidence([0, 0], [0, 1], 1, 2)
  with pytest.raises(ValueError, match="side must be one of"):
    segments.take(jnp.zeros((1,)), inc, "source")
  with pytest.raises(ValueError, match="take: x must have 2 rows"):
    segments.take(jnp.zeros((1,)), inc, "in")
  with pytest.raises(ValueError, match="gather_sum: weights must have 2 rows"):
    segments.gather_sum(jnp.zeros((2, 3)), jnp.zeros((3,)), inc)
  with pytest.raises(ValueError, match="prefix"):
    segments.gather_sum(jnp.zeros((2, 3)), jnp.zeros((2, 4)), inc)
  with pytest.raises(ValueError, match="segment_softmax: scores must have 2 rows"):
    kernels.segment_softmax(jnp.zeros((5,)), inc)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_segment_softmax_is_the_float32_softmax_rounded_once(dtype):
  """Both graph softmaxes (incidence and jax.ops) normalise float16/bfloat16 scores in float32: over
  a 600-entry segment, and one at scores of ±1e3, the weights are the float32 weights up to their
  one rounding (float16 sums would be off by many ulps), gradients are finite, segment 2 is empty."""
  out = np.repeat([0, 1], [600, 40])
  inc = segments.incidence(out, np.arange(len(out)) % N_IN, 3, N_IN)
  s = np.random.default_rng(5).normal(size=(len(out), 2))
  s[600:] *= 1e3
  s = jnp.asarray(s, dtype)

  @jax.jit
  def run(s):
    results = {}
    for name, softmax in (("incidence", lambda s: kernels.segment_softmax(s, inc)),
                          ("jax.ops", lambda s: kernels.segment_softmax(s, jnp.asarray(out), 3))):
      grad = jax.grad(lambda s: jnp.sum(jnp.sin(softmax(s).astype(jnp.float32))))(s)
      results[name] = softmax(s), grad, softmax(s.astype(jnp.float32))
    return results

  eps, sub = (float(getattr(jnp.finfo(dtype), a)) for a in ("eps", "smallest_subnormal"))
  for name, (alpha, grad, ref) in run(s).items():
    assert alpha.dtype == grad.dtype == jnp.dtype(dtype), name
    assert np.isfinite(np.asarray(grad, np.float32)).all(), name
    np.testing.assert_allclose(np.asarray(alpha, np.float32), ref, rtol=eps, atol=sub, err_msg=name)
