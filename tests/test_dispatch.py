"""impl="auto": the one decision function, and the GPU path it picks (jax.nn.dot_product_attention)
checked on CPU against the dense path (outputs and gradients; masks with empty rows, causal, GQA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import kernels, registry
from attnlab.kernels import dispatch

B, LQ, LK, H, HKV, D = 2, 19, 23, 4, 2, 8  # GQA groups of 2; Lq != Lk
LONG = 256  # Lq = Lk = 256: AUTO_BLOCKED_MIN_PAIRS pairs


def _choose(platform, score, normalizer="softmax", target="soft", n=LONG, d=D, dv=D, dtype="bfloat16", **kw):
  return dispatch.choose_impl(platform, score, normalizer, target, lq=n, lk=n, d=d, dv=dv, dtype=dtype, **kw)


@pytest.mark.parametrize("score", sorted(registry.names("score")))
@pytest.mark.parametrize("platform", ["gpu", "cpu", "tpu"])
def test_choose_impl_per_platform_and_score(platform, score):
  on_gpu_dpa = platform == "gpu" and score == "scaled_dot"
  assert dispatch.AUTO_BLOCKED_MIN_PAIRS == LONG * LONG
  assert _choose(platform, score) == ("dpa" if on_gpu_dpa else "blocked")
  assert _choose(platform, score, n=LONG - 1) == ("dpa" if on_gpu_dpa else "dense")
  assert _choose(platform, score, normalizer="sigmoid") == "blocked"  # dpa is softmax only
  for normalizer in ("sparsemax", "entmax15"):
    assert _choose(platform, score, normalizer=normalizer) == "dense"
  for target in ("hard", "hard_st", kernels.with_weight_dropout("soft")):
    assert _choose(platform, score, target=target) == "dense"
  assert _choose(platform, score, return_weights=True) == "dense"
  assert _choose(platform, score, dv=D + 1) == "blocked"  # jax.nn needs equal key/value widths
  assert _choose(platform, score, normalizer="sigmoid", normalizer_kwargs={"bias": -1.0}) == "blocked"


def test_choose_impl_gpu_aliases_and_dpa_conditions():
  """cuDNN's fused kernel: NVIDIA only, float16/bfloat16, head width <= 128 and a multiple of 8."""
  assert _choose("cuda", "scaled_dot") == _choose("gpu", "scaled_dot", dtype="float16") == "dpa"
  for platform in ("rocm", "METAL"):
    assert _choose(platform, "scaled_dot") == "blocked"
  assert _choose("gpu", "scaled_dot", dtype="float32") == "blocked"  # the O(L) blocked path, not dense XLA
  assert _choose("gpu", "scaled_dot", dtype="float32", n=LONG - 1) == "dense"
  for d in (12, 136):
    assert _choose("gpu", "scaled_dot", d=d, dv=d) == "blocked"
  assert _choose("gpu", "scaled_dot", d=128, dv=128) == "dpa"


@pytest.fixture(scope="module")
def data():
  rs = np.random.RandomState(0)
  f32 = lambda *shape: jnp.asarray(rs.standard_normal(shape), jnp.float32)
  q, k, v = f32(B, LQ, H, D), f32(B, LK, HKV, D), f32(B, LK, HKV, D)
  mask = rs.uniform(size=(B, H, LQ, LK)) < 0.6
  mask[1, 2, 5] = False  # an empty row
  key_pad = np.ones((B, 1, 1, LK), bool)
  key_pad[0, ..., :3] = False  # with causal, rows 0-2 of example 0 see no key
  key_pad[1, ..., 15:] = False
  return q, k, v, f32(B, LQ, H, D), {"none": None, "mask": jnp.asarray(mask),
                                     "key_pad": jnp.asarray(key_pad), "row": jnp.asarray(mask[:, :, :1])}


CASES = [("none", False), ("none", True), ("mask", False), ("mask", True), ("key_pad", False),
         ("key_pad", True), ("row", True)]


@pytest.mark.parametrize("mask_name,causal", CASES)
def test_dpa_path_matches_dense(data, mask_name, causal):
  """dispatch.dot_product_attention (XLA on CPU) = attention(impl="dense"): outputs and gradients,
  zero output on rows with nothing to attend to."""
  q, k, v, cot, masks = data
  mask = masks[mask_name]

  def run(fn):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(cot)

  dense = jax.jit(lambda: run(lambda q, k, v: kernels.attention(q, k, v, mask=mask, causal=causal,
                                                                  impl="dense")))()
  dpa = jax.jit(lambda: run(lambda q, k, v: dispatch.dot_product_attention(q, k, v, mask, causal, "xla")))()
  np.testing.assert_allclose(dpa[0], dense[0], atol=1e-5, rtol=1e-5)
  for g_dpa, g_dense in zip(dpa[1], dense[1]):
    np.testing.assert_allclose(g_dpa, g_dense, atol=1e-4, rtol=1e-4)
  if mask_name == "mask":
    np.testing.assert_array_equal(np.asarray(dpa[0])[1, 5, 2], 0.0)
  if mask_name == "key_pad" and causal:
    np.testing.assert_array_equal(np.asarray(dpa[0])[0, :3], 0.0)
    assert np.all(np.abs(np.asarray(dpa[0])[0, 3:]) > 0)


def test_auto_on_gpu_calls_jax_nn(data, monkeypatch):
  """attention(impl="auto") with jax.default_backend() reporting "gpu": cuDNN through jax.nn for
  scaled_dot softmax soft in bfloat16 (same numbers as dense), not where it does not apply (float32,
  returned weights)."""
  q, k, v, _, masks = data
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  seen = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",  # records the call, runs XLA's version on CPU
                      lambda *a, **kw: seen.append(kw) or real(*a, **{**kw, "implementation": "xla"}))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  kernels.attention.clear_cache()
  try:
    out = kernels.attention(q, k, v, mask=masks["key_pad"], causal=True)
    assert len(seen) == 1 and seen[0]["is_causal"] and seen[0]["implementation"] == "cudnn"
    _, w = kernels.attention(q, k, v, causal=True, return_weights=True)
    kernels.attention(*(x.astype(jnp.float32) for x in (q, k, v)), causal=True)
    assert len(seen) == 1 and w.shape == (B, H, LQ, LK)
  finally:
    kernels.attention.clear_cache()
  dense = kernels.attention(q, k, v, mask=masks["key_pad"], causal=True, impl="dense")
  np.testing.assert_allclose(out.astype(jnp.float32), dense.astype(jnp.float32), atol=2e-2, rtol=2e-2)
