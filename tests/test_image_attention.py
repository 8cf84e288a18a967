"""Tests of attnlab.modules.ImageSelfAttention (SAGAN) against a plain NumPy reference of the paper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from attnlab import AttentionSpec
from attnlab.modules import ImageSelfAttention


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _p(layer, name):
  return {k: np.asarray(v[...]) for k, v in nnx.state(getattr(layer, name), nnx.Param).items()}


def _sagan_numpy(x, layer, heads, merge="concat"):
  """Zhang et al. 2019, eq. (1)-(3), written per example and per head with loops and plain NumPy:
  s_ij = f(x_i)·g(x_j), β_ij = exp(s_ij) / Σ_j exp(s_ij), o_i = W_o Σ_j β_ij h(x_j), y = γ o + x."""
  x = np.asarray(x, np.float64)
  b, hh, ww, c = x.shape
  q, k, v, out = (_p(layer, n) for n in ("query", "key", "value", "out"))
  gamma = float(layer.gamma[...])
  y = np.empty_like(x)
  for e in range(b):
    pos = x[e].reshape(hh * ww, c)  # [N, C]
    heads_out = []
    for h in range(heads):
      f = pos @ q["kernel"][:, h, :] + q["bias"][h]  # [N, d]
      g = pos @ k["kernel"][:, h, :] + k["bias"][h]
      hv = pos @ v["kernel"][:, h, :] + v["bias"][h]  # [N, dv]
      o = np.zeros((hh * ww, hv.shape[1]))
      for i in range(hh * ww):
        s = np.array([f[i] @ g[j] for j in range(hh * ww)])
        beta = np.exp(s - s.max())
        beta /= beta.sum()
        o[i] = beta @ hv
      heads_out.append(o)
    if merge == "concat":
      proj = np.einsum("nhd,hdc->nc", np.stack(heads_out, 1), out["kernel"]) + out["bias"]
    else:
      proj = np.mean(heads_out, axis=0) @ out["kernel"] + out["bias"]
    y[e] = (gamma * proj + pos).reshape(hh, ww, c)
  return y


@pytest.mark.parametrize("heads,mode,merge", [(1, "split", "concat"), (2, "split", "concat"),
                                              (2, "copy", "mean")])
def test_matches_numpy_reference_of_the_paper(heads, mode, merge):
  layer = ImageSelfAttention(16, num_heads=heads, head_mode=mode, head_merge=merge, rngs=nnx.Rngs(0))
  assert layer.qk_features == 2 and layer.v_features == 16  # C/8 and C
  layer.gamma[...] = jnp.asarray(0.7)
  x = _x((2, 3, 4, 16))
  y, w = layer(x, return_weights=True)
  np.testing.assert_allclose(np.asarray(y), _sagan_numpy(x, layer, heads, merge), rtol=1e-4, atol=1e-5)
  assert w.shape == (2, heads, 12, 12)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-5)


def test_gamma_zero_at_init_is_identity_and_gradients_reach_gamma():
  layer = ImageSelfAttention(8, rngs=nnx.Rngs(1))
  x = _x((2, 4, 4, 8), 1)
  assert float(layer.gamma[...]) == 0.0
  np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(x))
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
  assert float(jnp.abs(grads["gamma"][...])) > 0  # γ learns although the branch starts shut


def test_grads_in_x_agree_with_finite_differences():
  layer = ImageSelfAttention(8, score="scaled_dot", normalizer="sparsemax", rngs=nnx.Rngs(2))
  layer.gamma[...] = jnp.asarray(0.5)
  check_grads(lambda x: layer(x), (_x((1, 2, 3, 8), 2),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_spec_form_hard_target_samples_one_position_and_blocked_equals_dense():
  spec = AttentionSpec(score="scaled_dot", target="hard", num_heads=2)
  layer = ImageSelfAttention(16, qk_features=4, attention=spec, rngs=nnx.Rngs(0, attention=1))
  layer.gamma[...] = jnp.asarray(1.0)
  x = _x((2, 3, 3, 16), 3)
  _, w, aux = layer(x, deterministic=False, return_weights=True, return_aux=True)
  assert aux["log_prob"].shape == (2, 2, 9) and np.all(np.isfinite(np.asarray(aux["log_prob"])))
  dense = ImageSelfAttention(16, impl="dense", rngs=nnx.Rngs(4))
  blocked = ImageSelfAttention(16, impl="blocked", rngs=nnx.Rngs(4))
  for m in (dense, blocked):
    m.gamma[...] = jnp.asarray(1.0)
  x = _x((1, 4, 4, 16), 5)
  np.testing.assert_allclose(np.asarray(blocked(x)), np.asarray(dense(x)), rtol=1e-5, atol=1e-5)


def test_bad_arguments_name_themselves():
  with pytest.raises(ValueError, match="score"):
    ImageSelfAttention(8, score="nope", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_heads"):
    ImageSelfAttention(16, num_heads=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\[batch, height, width, 8\]"):
    ImageSelfAttention(8, rngs=nnx.Rngs(0))(_x((2, 4, 8)))
