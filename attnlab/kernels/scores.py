"""Query–key interaction: the score functions s(q_i, k_j), for ONE head and no batch axis.

A score is split into two stages so that the cost that is linear in the sequence length is paid
once and the pairwise stage can run on blocks of (query, key) pairs:

    features_q = project_q(params, q)          # [Lq, D] -> [Lq, F]
    features_k = project_k(params, k)          # [Lk, D] -> [Lk, F]
    scores     = pairwise(params, fq, fk)      # [Lq, F], [Lk, F] -> [Lq, Lk]

| name         | s(q, k)                               | params pytree (shared by all heads)                |
|--------------|---------------------------------------|----------------------------------------------------|
| `dot`        | q · k                                 | None                                               |
| `scaled_dot` | q · k / √d                            | None                                               |
| `general`    | qᵀ W k                                | {"W": [D, D]}                                      |
| `cosine`     | exp(log_scale) · cos(q, k)            | {"log_scale": []} (learnable temperature)          |
| `additive`   | vᵀ tanh(W_q q + W_k k + b) (Bahdanau) | {"W_q": [D, A], "W_k": [D, A], "b": [A], "v": [A]} |
| `concat`     | vᵀ tanh(W [q; k]) (Luong)             | {"W": [2D, A], "v": [A]}                           |

Per-head parameters: every leaf may carry an extra leading axis of size ``heads``
(``init_params(..., num_heads=H)``); the kernel then gives head h the slice ``leaf[h]``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from attnlab import registry
from attnlab.kernels import _dtypes

Array = jax.Array


def _identity(params, x):
  del params
  return x


def dot_pairwise(params, fq, fk):  # [Lq, F], [Lk, F] -> [Lq, Lk]
  """fq · fkᵀ: the dot-product family's pairwise stage (the blocked kernel has a fast path for it),
  accumulated and returned in at least float32 (float16 logits would overflow past 65504)."""
  del params
  return jnp.matmul(fq, fk.T, preferred_element_type=_dtypes.compute_dtype(jnp.result_type(fq, fk)))


def _tanh_pairwise(params, fq, fk):  # [Lq, A], [Lk, A] -> [Lq, Lk]
  return jnp.tanh(fq[:, None, :] + fk[None, :, :]) @ params["v"]  # [Lq, Lk, A] @ [A]


class Score(NamedTuple):
  """A registered score. ``init`` is None for parameter-free scores."""
  pairwise: Callable[[Any, Array, Array], Array]
  project_q: Callable[[Any, Array], Array] = _identity
  project_k: Callable[[Any, Array], Array] = _identity
  init: Callable[..., Any] | None = None

  def __call__(self, params: Any, q: Array, k: Array) -> Array:
    """Scores [Lq, Lk] of queries q [Lq, D] against keys k [Lk, D]."""
    return self.pairwise(params, self.project_q(params, q), self.project_k(params, k))


def as_score(member: Any, name: str) -> Score:
  """A registry member as a Score: a plain function ``fn(params, q, k) -> [Lq, Lk]`` is wrapped."""
  if isinstance(member, Score):
    return member
  if callable(member):
    return Score(pairwise=lambda params, q, k: member(params, q, k))
  raise TypeError(f"score {name!r} must be a Score or a callable fn(params, q, k), got {member!r}")


def _normal(rng, shape, fan_in):
  return jax.random.normal(rng, shape, jnp.float32) / math.sqrt(fan_in)


def _init_general(rng, dim):
  return {"W": _normal(rng, (dim, dim), dim)}


def _init_cosine(rng, dim, log_scale=math.log(10.0)):
  del rng, dim
  return {"log_scale": jnp.asarray(log_scale, jnp.float32)}


def _init_additive(rng, dim, hidden=None):
  hidden = hidden or dim
  r_q, r_k, r_v = jax.random.split(rng, 3)
  return {"W_q": _normal(r_q, (dim, hidden), dim), "W_k": _normal(r_k, (dim, hidden), dim),
          "b": jnp.zeros((hidden,), jnp.float32), "v": _normal(r_v, (hidden,), hidden)}


def _init_concat(rng, dim, hidden=None):
  hidden = hidden or dim
  r_w, r_v = jax.random.split(rng)
  return {"W": _normal(r_w, (2 * dim, hidden), 2 * dim), "v": _normal(r_v, (hidden,), hidden)}


def _unit(x):
  """Rows of x scaled to unit L2 norm (norm in float32 at least; a zero row stays zero, with a
  finite gradient: the floor is per dtype), in x's dtype."""
  x32 = _dtypes.upcast(x)
  sq = jnp.sum(x32 * x32, axis=-1, keepdims=True)
  return (x32 * jax.lax.rsqrt(jnp.maximum(sq, _dtypes.sq_norm_floor(x.dtype)))).astype(x.dtype)


registry.register("score", "dot", Score(pairwise=dot_pairwise))
registry.register("score", "scaled_dot", Score(
    pairwise=dot_pairwise,
    project_q=lambda params, q: q * (1.0 / math.sqrt(q.shape[-1]))))
registry.register("score", "general", Score(
    pairwise=dot_pairwise,
    project_q=lambda params, q: q @ params["W"],  # [Lq, D] @ [D, D]
    init=_init_general))
registry.register("score", "cosine", Score(
    pairwise=dot_pairwise,
    project_q=lambda params, q: _unit(q) * jnp.exp(params["log_scale"]),
    project_k=lambda params, k: _unit(k),
    init=_init_cosine))
registry.register("score", "additive", Score(
    pairwise=_tanh_pairwise,
    project_q=lambda params, q: q @ params["W_q"],  # [Lq, A]
    project_k=lambda params, k: k @ params["W_k"] + params["b"],  # [Lk, A]
    init=_init_additive))
registry.register("score", "concat", Score(
    pairwise=_tanh_pairwise,
    project_q=lambda params, q: q @ params["W"][: q.shape[-1]],  # [Lq, A]
    project_k=lambda params, k: k @ params["W"][k.shape[-1]:],  # [Lk, A]
    init=_init_concat))


def get_score(name: str) -> Score:
  return as_score(registry.get("score", name), name)


def init_params(score: str, rng: Array, dim: int, *, num_heads: int | None = None, **kwargs) -> Any:
  """Parameters of ``score`` for queries/keys of size ``dim``; None for parameter-free scores.

  Args:
    score: a registered score name.
    rng: a PRNG key.
    dim: the query/key feature size D.
    num_heads: if given, every leaf gets a leading [num_heads] axis (one set per head).
    **kwargs: score-specific options, e.g. ``hidden`` (A) for additive/concat.
  """
  s = get_score(score)
  if s.init is None:
    if kwargs:
      raise TypeError(f"init_params: score {score!r} has no parameters; got options {sorted(kwargs)}")
    return None
  if num_heads is None:
    return s.init(rng, dim, **kwargs)
  return jax.vmap(lambda r: s.init(r, dim, **kwargs))(jax.random.split(rng, num_heads))
