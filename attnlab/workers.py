"""A sweep trained by several worker processes at once (``attnlab sweep --jobs=N``).

The models of a sweep are small, so one XLA:CPU process leaves most of a second core idle (its ops
are too small to split across threads, and compiling is single-threaded). ``run`` starts N spawned
processes, each running the sweep loop (attnlab.sweep.run_sweep) over the same runs: a worker takes
the next run that no other holds (attnlab.runlock) and that is not yet recorded, so the runs spread
over the workers as they finish. Every run is the same program with the same seeds whichever worker
trains it, so the results do not depend on N. When the workers are done, the parent makes one more
pass itself: it records the runs that reuse a twin's lines, and trains (or reports the error of)
anything a worker left undone.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import threading
import time
from typing import Any

import ml_collections
from absl import logging

from attnlab import results, sweep as sweep_lib


def default_jobs() -> int:
  """The CPU cores this process may use on a CPU backend (one worker per core); 1 on accelerators,
  whose memory one process already claims."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu" or jax.process_count() > 1:
    return 1
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _exit_with(parent: int) -> None:
  """Ends this worker when its parent is gone (killed: it cannot clean up), so no run trains on
  unobserved; the run's lock goes with the process and a rerun resumes it."""
  while os.getppid() == parent:
    time.sleep(0.5)
  os._exit(1)  # pylint: disable=protected-access


def _worker(sweep: ml_collections.ConfigDict, workdir: str, shard: tuple[int, int], verbosity: int,
            parent: int) -> None:
  threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
  logging.set_verbosity(verbosity)
  sweep_lib.run_sweep(sweep, workdir, shard=shard, progress=False, worker=True)


def _recorded_runs(res_path: pathlib.Path, runs: list[sweep_lib.Run], seeds: tuple[int, ...]) -> int:
  done = {results.key(r) for r in results.read_lines(res_path)} if res_path.exists() else set()
  return sum(all((results.canonical(r.point), s) in done for s in seeds) for r in runs)


def run(sweep: ml_collections.ConfigDict, workdir: str, *, jobs: int, shard: tuple[int, int] = (0, 1),
        progress: bool = True) -> dict[str, Any]:
  """Runs this shard of ``sweep`` with ``jobs`` worker processes, then a final pass in this one;
  returns the final pass's counts (attnlab.sweep.run_sweep) with ``trained`` counting every run
  trained by a worker as well."""
  if jobs <= 1:
    return sweep_lib.run_sweep(sweep, workdir, shard=shard, progress=progress)
  runs = [r for r in sweep_lib.expand(sweep) if r.index % shard[1] == shard[0]]
  sweep_lib.check_workdir(pathlib.Path(workdir), sweep, runs)
  res_path = pathlib.Path(workdir) / "results.jsonl"
  before = _recorded_runs(res_path, runs, tuple(sweep.seeds))
  ctx = multiprocessing.get_context("spawn")  # each worker its own JAX runtime
  procs = [ctx.Process(target=_worker, args=(sweep, workdir, shard, logging.get_verbosity(), os.getpid()),
                       name=f"attnlab-sweep-worker-{i}") for i in range(min(jobs, len(runs)))]
  for p in procs:
    p.start()
  bar = sweep_lib.progress_bar(progress)
  try:
    with bar:
      task_id = bar.add_task(f"sweep {sweep.name} ({len(procs)} workers)", total=len(runs),
                             completed=before)
      while any(p.is_alive() for p in procs):
        time.sleep(1.0)
        bar.update(task_id, completed=_recorded_runs(res_path, runs, tuple(sweep.seeds)))
  finally:
    for p in procs:
      p.join()
  failed = [p.name for p in procs if p.exitcode]
  if failed:
    logging.warning("sweep %s: %s exited with an error; the final pass retries their runs",
                    sweep.name, ", ".join(failed))
  trained = _recorded_runs(res_path, runs, tuple(sweep.seeds)) - before
  counts = sweep_lib.run_sweep(sweep, workdir, shard=shard, progress=False)
  counts["trained"] += trained
  counts["skipped"] = max(0, counts["skipped"] - trained)
  return counts
