"""Dropout on attention weights, as a composable wrapper around a registered target.

The attention kernel normalises scores into weights α and hands them to a *target* (soft weighted
sum, hard sample, ...). Dropout on the attention weights (Vaswani et al. 2017; GAT's dropout on
attention coefficients) sits between the two, so it is expressed as a target that first drops
weights and then calls the wrapped target:

    name = with_weight_dropout("soft")             # registers "soft+dropout" on first use
    out = attention(q, k, v, target=name, rng=key, target_kwargs={"dropout_rate": 0.1})

* non-stochastic targets (``soft``): each weight is kept with probability 1 − rate and scaled by
  1 / (1 − rate) (inverted dropout), so E[α̃] = α;
* stochastic targets (``hard``, ``hard_st``): the kept weights are renormalised to sum to one, so
  the sample and its ``log_prob`` come from one proper distribution (REINFORCE stays unbiased, the
  dropout mask being extra exogenous noise).

With ``deterministic=True`` the wrapper is the identity around the wrapped target. The weights
returned by ``attention(..., return_weights=True)`` are the pre-dropout weights (as flax sows them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import registry
from attnlab.kernels import _dtypes
from attnlab.kernels import targets as _targets

Array = jax.Array

SUFFIX = "+dropout"


def dropout_weights(weights: Array, rng: Array, rate: float | Array, *,
                    once: bool = False) -> Array:
  """Inverted dropout of attention weights: keep each with probability 1 − rate, scale by 1/(1 − rate).

  ``once``: compute the keep mask and the result once into memory (``materialize``), for arrays
  read by gathers (graph attention), whose forward and backward would otherwise each recompute the
  mask's hash inside every gathering consumer.
  """
  keep_prob = 1.0 - jnp.asarray(rate, weights.dtype)
  keep = jax.random.bernoulli(rng, keep_prob, weights.shape)
  dropped = jnp.where(materialize(keep) if once else keep,
                      weights / jnp.maximum(keep_prob, _dtypes.divisor_floor(weights.dtype)), 0.0)
  return materialize(dropped) if once else dropped


def materialize(x: Array) -> Array:
  """x itself, computed once into memory: a two-element scatter XLA cannot fuse through.

  For a cheap-to-store but costly-to-compute array read by gathers (a dropout mask's hash): left
  fusible, XLA:CPU recomputes it inside every gathering consumer, once per gathered element (GAT:
  the value-dropout hash per edge and slot). Two positions (first and last element), since XLA
  turns a one-element scatter into a
  dynamic-update-slice, which it does fuse into consumers."""
  if x.size == 0:
    return x
  at = tuple(np.array([0, d - 1]) for d in x.shape)
  return x.at[at].set(x[at])


def _wrap(base: _targets.Target) -> _targets.Target:
  def fn(weights, value, *, rng=None, deterministic=False, dropout_rate=0.0, **options):
    if deterministic:
      return base.fn(weights, value, rng=rng, deterministic=True, **options)
    r_drop, r_target = jax.random.split(rng)
    dropped = dropout_weights(weights, r_drop, dropout_rate)  # [Lq, Lk]
    if base.stochastic:
      total = jnp.sum(dropped, axis=-1, keepdims=True)
      dropped = dropped / jnp.where(total > 0, total, 1.0)
    return base.fn(dropped, value, rng=r_target if base.stochastic else None,
                   deterministic=False, **options)

  return _targets.Target(fn, stochastic=True)


def with_weight_dropout(target: str) -> str:
  """The registered name of ``target`` preceded by dropout on its weights; registers it if needed.

  The returned target is stochastic (needs ``rng`` unless ``deterministic``) and takes the option
  ``dropout_rate`` (via ``target_kwargs``). Call it at run time, not at import time.
  """
  name = f"{target}{SUFFIX}"
  if name not in registry.names("target"):
    registry.register("target", name, _wrap(_targets.get_target(target)))
  return name
