"""The one timing helper of the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import time

import jax
import numpy as np


def time_interleaved(jobs, repeats, pause=0.0):
  """Median seconds of each zero-argument callable; after one warm-up (and compile) each, the timed
  runs go round-robin over all jobs, so that a change in machine load hits every method alike, in
  a new random order each round (measured: two identical programs timed at fixed neighbouring
  places differed by 8-25 % across whole runs).
  ``pause`` seconds of sleep before each timed run: torch's OpenMP threads spin for a while after
  a parallel region and otherwise steal a core from whichever method runs next (measured: JAX
  methods timed right after torch ran 10-15 % slower)."""
  for fn in jobs:
    jax.block_until_ready(fn())
  ts = [[] for _ in jobs]
  order = np.random.default_rng(0)
  for _ in range(repeats):
    for i in order.permutation(len(jobs)):
      time.sleep(pause)
      t = time.perf_counter()
      jax.block_until_ready(jobs[i]())
      ts[i].append(time.perf_counter() - t)
  return [float(np.median(t)) for t in ts]
