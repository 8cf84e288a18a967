"""The registry (outside registration, duplicates refused) and errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import kernels, registry

Q = jnp.ones((1, 3, 2, 4))
KV = jnp.ones((1, 5, 2, 4))


def test_names_cover_the_seed_categories():
  assert set(registry.names("score")) >= {"additive", "concat", "dot", "scaled_dot", "general", "cosine"}
  assert set(registry.names("normalizer")) >= {"softmax", "sparsemax", "entmax15", "sigmoid"}
  assert set(registry.names("target")) >= {"soft", "hard", "hard_st"}


def test_register_from_outside_and_duplicates_refused():
  def neg_l2(params, q, k):  # a researcher's own score: −‖q − k‖²
    del params
    return -jnp.sum((q[:, None, :] - k[None, :, :]) ** 2, -1)

  registry.register("score", "test_neg_l2")(neg_l2)
  try:
    with pytest.raises(ValueError, match="already registered"):
      registry.register("score", "test_neg_l2", neg_l2)
    with pytest.raises(ValueError, match="already registered"):
      registry.register("score", "dot", neg_l2)
    q = jax.random.normal(jax.random.key(0), (1, 3, 1, 2))
    k = jax.random.normal(jax.random.key(1), (1, 4, 1, 2))
    _, w = kernels.attention(q, k, k, score="test_neg_l2", return_weights=True)
    s = -((np.asarray(q)[0, :, 0, None, :] - np.asarray(k)[0, None, :, 0, :]) ** 2).sum(-1)
    e = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(w[0, 0], e / e.sum(-1, keepdims=True), rtol=1e-5)
  finally:
    registry.unregister("score", "test_neg_l2")
  assert "test_neg_l2" not in registry.names("score")


@pytest.mark.parametrize("kw, kind", [({"score": "nope"}, "score"), ({"normalizer": "nope"}, "normalizer"),
                                      ({"target": "nope"}, "target")])
def test_unknown_names_list_the_registered_ones(kw, kind):
  with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; registered {kind}s: .*"):
    kernels.attention(Q, KV, KV, **kw)


def test_unknown_kind():
  with pytest.raises(ValueError, match="unknown registry kind 'colour'; valid kinds: .*score"):
    registry.names("colour")


@pytest.mark.parametrize("q, k, v, match", [
    (jnp.ones((3, 2, 4)), KV, KV, "query must have rank 4"),
    (Q, jnp.ones((1, 5, 2, 3)), KV, r"key must have shape \[1, kv_len, kv_heads, 4\]"),
    (Q, KV, jnp.ones((1, 6, 2, 4)), r"value must have shape \[1, 5, 2, v_dim\]"),
    (Q, jnp.ones((1, 5, 3, 4)), jnp.ones((1, 5, 3, 4)), r"kv_heads \(3\) must divide heads \(2\)"),
    (Q, KV.astype(jnp.bfloat16), KV, "key has dtype bfloat16, expected float32"),
    (Q.astype(jnp.int32), KV, KV, "query must be floating point"),
])
def test_shape_and_dtype_errors_name_the_argument(q, k, v, match):
  with pytest.raises(ValueError, match=match):
    kernels.attention(q, k, v)


def test_mask_errors():
  with pytest.raises(ValueError, match=r"mask must be broadcastable to \[1, 2, 3, 5\]"):
    kernels.attention(Q, KV, KV, mask=jnp.ones((4, 5), bool))
  with pytest.raises(ValueError, match="mask must be boolean"):
    kernels.attention(Q, KV, KV, mask=jnp.ones((3, 5)))


def test_missing_params_and_rng():
  with pytest.raises(ValueError, match=r"score 'additive' needs params; make them with "
                                       r"attnlab.kernels.init_params\('additive'"):
    kernels.attention(Q, KV, KV, score="additive")
  with pytest.raises(ValueError, match="score 'dot' takes no params"):
    kernels.attention(Q, KV, KV, score="dot", params={"W": jnp.ones((4, 4))})
  with pytest.raises(ValueError, match=r"params for score 'general' must have leaf ranks"):
    kernels.attention(Q, KV, KV, score="general", params={"W": jnp.ones((3, 4, 4))})
  with pytest.raises(ValueError, match="target 'hard' samples and needs rng"):
    kernels.attention(Q, KV, KV, target="hard")
  with pytest.raises(TypeError, match="has no parameters"):
    kernels.init_params("dot", jax.random.key(0), 4, hidden=3)
