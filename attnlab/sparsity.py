"""Attention sparsity of trained members: the fraction of exact zeros in their attention weights.

Sparse normalisers (sparsemax, entmax) give exact zeros where softmax gives small positive weights;
this measures how many. For each member, the model runs on the first ``max_examples`` examples of
the first val batch (node classifiers: the whole graph) with sowing on (attnlab.models.sowing), and
the zeros of every sown attention-weight array (sequence weights [B, H, Lq, Lk]; graph edge weights
α [E, H]) are counted together. Masked positions (padding, causal masks) are zeros for every
normaliser and count too: within a block, the softmax variant shows the masks' share. One compiled
program per run; members are evaluated one after another (``lax.map``) to bound memory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnlab import models

_WEIGHTS = "attention_weights"


def zero_fractions(graphdef: Any, params: Any, rest: Any, batches: dict[str, jax.Array], *,
                   start: int, count: int, shared: bool, family: str,
                   max_examples: int = 64) -> np.ndarray:
  """Fraction of exact zeros per member ``start .. start+count-1`` ([count]; NaN if nothing is sown).

  ``batches`` are a run's val batches ([nb, B, ...], or [nb, S, B, ...] per seed unless ``shared``;
  member ``start + i`` then reads seed ``i``'s batch: ``start`` is a multiple of the seed count).
  """
  def one(params, rest, batch):
    if family != "node_classifier":
      batch = jax.tree.map(lambda x: x[:max_examples], batch)
    model = nnx.merge(graphdef, params, rest, copy=True)
    with models.sowing():
      _, sown = nnx.capture(lambda m: m(batch, train=False), nnx.Intermediate)(model)
    weights = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(sown))[0]
               if any(getattr(p, "key", None) == _WEIGHTS for p in path)
               and jnp.issubdtype(leaf.dtype, jnp.floating)]
    if not weights:
      return jnp.float32(jnp.nan)
    zeros = sum(jnp.sum(w == 0, dtype=jnp.float32) for w in weights)
    return zeros / float(sum(w.size for w in weights))

  @jax.jit
  def run(params, rest, batches, start):
    take = lambda t: jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, count), t)
    first = jax.tree.map(lambda x: x[0], batches)  # [B, ...] or [S, B, ...]
    if shared:
      return jax.lax.map(lambda pr: one(*pr, first), (take(params), take(rest)))
    return jax.lax.map(lambda prb: one(*prb), (take(params), take(rest), first))

  return np.asarray(jax.device_get(run(params, rest, batches, start)), np.float64)
