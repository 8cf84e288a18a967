"""A sweep trained by worker processes (attnlab.workers) records what a serial sweep records."""

import collections
import os

from attnlab import results, sweep, workers
from tests.test_runner import toy_sweep


def _lines(path):
  return {results.key(r): {k: v for k, v in r.items() if k != "run_wall_s"}
          for r in results.read_lines(path)}


def test_two_workers_record_every_run_once_with_the_serial_numbers(tmp_path):
  s = toy_sweep(steps=4, widths=(4, 8))
  s.grids = [s.grids[0], {**s.grids[1], "axes": {"model.attention.score": ["scaled_dot", "additive"]}}]
  runs = sweep.expand(s)
  assert {i: t.index for i, t in sweep._twins(runs).items()} == {2: 0}  # pylint: disable=protected-access
  serial = sweep.run_sweep(s, str(tmp_path / "serial"), progress=False)
  counts = workers.run(s, str(tmp_path / "workers"), jobs=2, progress=False)
  assert counts["busy"] == 0 and counts["runs"] == serial["runs"] == 4
  keys = [results.key(r) for r in results.read_lines(tmp_path / "workers" / "results.jsonl")]
  assert len(keys) == 8 and set(collections.Counter(keys).values()) == {1}  # no (run, seed) twice
  assert _lines(tmp_path / "workers" / "results.jsonl") == _lines(tmp_path / "serial" / "results.jsonl")


def test_default_jobs_is_one_per_usable_core_on_a_cpu():
  assert workers.default_jobs() == len(os.sched_getaffinity(0))
