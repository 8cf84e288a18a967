"""A run's batches on the devices: training batches per chunk, val/test batches made once.

Batches are stacked per seed [.., S, B, ...], or shared by all seeds (seed axis None) when every
seed sees the same data (node classifiers' fixed graph; evaluation sets).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from attnlab import parallel


def _stack(batches: list[dict[str, Any]]) -> dict[str, Any]:
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)  # leaves: arrays (a GraphBatch's too)


def _same(batches: list[dict[str, Any]]) -> bool:
  first = jax.tree.leaves(batches[0])
  return all(all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other), first))
             for other in batches[1:])


def _eval_plan(task: Any, split: str, cap: int) -> tuple[int, int]:
  """(number of batches, batch size): equal batches (one compiled program) covering the split."""
  if task.family == "node_classifier":
    return 1, cap
  n = task.eval_size
  if n is None:
    try:
      n = task.num_batches(split, 1)
    except NotImplementedError:
      return 1, cap
  size = max(d for d in range(1, min(n, cap) + 1) if n % d == 0)
  return n // size, size


class RunData:
  """Host batches per seed, stacked [.., S, B, ...], or shared by all seeds (seed axis None)."""

  def __init__(self, task: Any, config: ml_collections.ConfigDict, seeds: list[int], mesh: Any):
    self.task, self.seeds, self.mesh = task, seeds, mesh
    self.bs = config.train.batch_size
    self.static = task.family == "node_classifier"  # the whole graph is the (fixed) batch
    first = [task.batch("train", 0, self.bs, seed=s) for s in seeds]
    self.shared = self.static and _same(first)
    self.seed_axis = None if self.shared else 0
    per_split = {split: self._eval_batches(split, config.train.eval_batch_size) for split in ("val", "test")}
    self.eval_shared = all(_same(b) for batches in per_split.values() for b in batches)
    self.eval_seed_axis = None if self.eval_shared else 0
    self.eval = {split: self._put(_stack([b[0] if self.eval_shared else _stack(b) for b in batches]),
                                  lead=1, shared=self.eval_shared)
                 for split, batches in per_split.items()}
    self.static_batch = (self._put(first[0] if self.shared else _stack(first), lead=0, shared=self.shared)
                         if self.static else None)

  def _eval_batches(self, split: str, cap: int) -> list[list[dict[str, np.ndarray]]]:
    nb, size = _eval_plan(self.task, split, cap)
    return [[self.task.batch(split, i, size, seed=s) for s in self.seeds] for i in range(nb)]

  def _put(self, batch: dict[str, np.ndarray], lead: int, shared: bool) -> dict[str, jax.Array]:
    if self.static:
      return parallel.shard_batch(batch, self.mesh, None)  # every device needs the whole graph
    return parallel.shard_batch(batch, self.mesh, lead + (0 if shared else 1))

  def train(self, start: int, k: int, steps: int) -> dict[str, jax.Array] | None:
    if self.static:
      return self.static_batch
    chunk = [_stack([self.task.batch("train", min(t, steps - 1), self.bs, seed=s) for s in self.seeds])
             for t in range(start, start + k)]
    return self._put(_stack(chunk), lead=1, shared=False)
