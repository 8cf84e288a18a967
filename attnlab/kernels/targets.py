"""Target-vector calculation: weights α [Lq, Lk] and values v [Lk, Dv] -> z [Lq, Dv], ONE head.

| name      | z_i                                              | rng    | aux                          |
|-----------|--------------------------------------------------|--------|------------------------------|
| `soft`    | Σ_j α_ij v_j (the expectation)                   | no     | {}                           |
| `hard`    | v_j*, j* ~ Categorical(α_i·) (Xu et al. 2015)    | yes    | {"index", "log_prob"} [Lq]   |
| `hard_st` | Gumbel-softmax straight-through (Jang et al. 2017) | yes  | {"index"} [Lq]               |

``hard`` is not differentiable through the sample: train it with REINFORCE, i.e. add
``-stop_gradient(reward - baseline) * aux["log_prob"]`` to the loss (``log_prob`` = log α_ij*,
differentiable w.r.t. the scores). ``hard_st`` is one-hot in the forward pass and has the gradient
of the relaxation softmax((log α + g)/temperature) in the backward pass.
With ``deterministic=True`` both take j* = argmax_j α_ij (evaluation) and need no rng.
A row whose weights are all zero (nothing to attend to) gives z_i = 0 and log_prob 0.

``with_weight_dropout(target)`` returns a new ``Target`` that drops weights before calling
``target`` (dropout on attention weights, Vaswani et al. 2017); pass it as ``attention(...,
target=with_weight_dropout("soft"), target_kwargs={"dropout_rate": 0.1}, rng=key)``.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from attnlab import registry
from attnlab.kernels import _dropout, _dtypes
from attnlab.kernels import normalizers as _normalizers

Array = jax.Array


class Target(NamedTuple):
  fn: Callable[..., tuple[Array, dict]]  # (weights, value, *, rng, deterministic, **opts) -> (z, aux)
  stochastic: bool = False  # needs an rng unless deterministic


def soft(weights, value, *, rng=None, deterministic=False):
  del rng, deterministic
  return weights @ value, {}  # [Lq, Lk] @ [Lk, Dv]


def _safe_log(w):
  return jnp.log(jnp.where(w > 0, w, 1.0))


def _pick(weights, value, index):
  valid = jnp.any(weights > 0, axis=-1)  # [Lq]
  return jnp.where(valid[:, None], value[index], 0.0), valid  # [Lq, Dv]


def hard(weights, value, *, rng=None, deterministic=False):
  logits = jnp.where(weights > 0, _dtypes.upcast(_safe_log(weights)), -jnp.inf)  # [Lq, Lk]
  if deterministic:
    index = jnp.argmax(weights, axis=-1)
  else:
    index = jax.random.categorical(rng, jax.lax.stop_gradient(logits), axis=-1)  # [Lq]
  z, valid = _pick(weights, value, index)
  chosen = jnp.take_along_axis(weights, index[:, None], axis=-1)[:, 0]  # α_ij* [Lq]
  log_prob = jnp.where(valid, _safe_log(chosen), 0.0)
  return z, {"index": index, "log_prob": log_prob}


def hard_st(weights, value, *, rng=None, deterministic=False, temperature=1.0):
  # The relaxation is a masked softmax in float32 at least: no fill value, so no -inf or overflow
  # in any dtype, and a row with no positive weight relaxes to zeros.
  support = weights > 0  # [Lq, Lk]
  logits = _dtypes.upcast(_safe_log(weights))  # [Lq, Lk], 0 outside the support
  if not deterministic:
    logits = logits + jax.random.gumbel(rng, logits.shape, logits.dtype)
  relaxed = _normalizers.softmax(logits / temperature, support)  # [Lq, Lk]
  index = jnp.argmax(jnp.where(support, logits, -jnp.inf), axis=-1)
  one_hot = jax.nn.one_hot(index, weights.shape[-1], dtype=relaxed.dtype)
  valid = jnp.any(support, axis=-1, keepdims=True)
  st = (one_hot + relaxed - jax.lax.stop_gradient(relaxed)) * valid  # hard forward, soft backward
  return st.astype(weights.dtype) @ value, {"index": index}


registry.register("target", "soft", Target(soft))
registry.register("target", "hard", Target(hard, stochastic=True))
registry.register("target", "hard_st", Target(hard_st, stochastic=True))


def get_target(name: str) -> Target:
  member = registry.get("target", name)
  return member if isinstance(member, Target) else Target(member)


def resolve(target: str | Target) -> Target:
  """A registered target's name, or a ``Target`` itself (e.g. from ``with_weight_dropout``)."""
  return target if isinstance(target, Target) else get_target(target)


@functools.lru_cache(maxsize=None)
def _with_dropout(base: Target) -> Target:
  def fn(weights, value, *, rng=None, deterministic=False, dropout_rate=0.0, **options):
    if deterministic:
      return base.fn(weights, value, rng=rng, deterministic=True, **options)
    r_drop, r_target = jax.random.split(rng)
    dropped = _dropout.dropout_weights(weights, r_drop, dropout_rate)  # [Lq, Lk]
    if base.stochastic:
      total = jnp.sum(dropped, axis=-1, keepdims=True)
      dropped = dropped / jnp.where(total > 0, total, 1.0)
    return base.fn(dropped, value, rng=r_target if base.stochastic else None,
                   deterministic=False, **options)

  return Target(fn, stochastic=True)


def with_weight_dropout(target: str | Target) -> Target:
  """``target`` preceded by dropout on its weights [Lq, Lk]; registers nothing.

  The result is stochastic (needs ``rng`` unless ``deterministic``) and takes the option
  ``dropout_rate``. Non-stochastic targets (``soft``) get inverted dropout (kept weights scaled by
  1 / (1 − rate), so E[α̃] = α); stochastic ones (``hard``, ``hard_st``) get the kept weights
  renormalised to sum to one, so the sample and its ``log_prob`` come from one distribution.
  With ``deterministic=True`` it is the wrapped target. One ``Target`` per wrapped target (cached),
  so passing it to the jitted ``attention`` compiles once.
  """
  return _with_dropout(resolve(target))
