"""Inverted dropout of attention weights and node values, and ``materialize`` (speed layer).

``dropout_weights(..., once=True)`` computes the keep mask and the result once into memory, for
arrays read by gathers (graph attention); docs/performance.md, "Dropout masks computed once".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.kernels import _dtypes

Array = jax.Array


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
