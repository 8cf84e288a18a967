"""The one timing helper of the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import time

import jax
import numpy as np


def time_interleaved(jobs, repeats, pause=0.0):
  """Median seconds of each zero-argument callable; after one warm-up (and compile) each, the timed
  runs go round-robin over all jobs, so that a change in machine load hits every method alike.
  ``pause`` seconds of sleep before each timed run: torch's OpenMP threads spin for a while after
  a parallel region and otherwise steal a core from whichever method runs next (measured: JAX
  methods timed right after torch ran 10-15 % slower)."""
  for fn in jobs:
    jax.block_until_ready(fn())
  ts = [[] for _ in jobs]
  for _ in range(repeats):
    for fn, t_list in zip(jobs, ts):
      time.sleep(pause)
      t = time.perf_counter()
      jax.block_until_ready(fn())
      t_list.append(time.perf_counter() - t)
  return [float(np.median(t)) for t in ts]
