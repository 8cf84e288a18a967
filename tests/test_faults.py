"""Fault injection into runs: killed at the end, early stops on a checkpoint step, two processes on
one run, damaged checkpoints, full disks, a diverging seed. Each test checks that nothing was lost
or written twice and that the message names what went wrong (bad values: test_bad_values.py)."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from attnlab import checkpoints, report, results, runlock, sweep, train
from tests.test_cli import ENV, REPO, SMOKE, TOY, attnlab
from tests.test_runner import per_seed, toy_config

KILL_AT_FINAL_CHECKPOINT = """
import os, signal, sys
from attnlab import checkpoints, cli
real_save = checkpoints.save
def save(directory, step, tree):
  real_save(directory, step, tree)
  if step == 24:  # the final checkpoint: killed before result.json
    os.kill(os.getpid(), signal.SIGKILL)
checkpoints.save = save
sys.argv = ["attnlab", *sys.argv[1:]]
cli.run()
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """An uninterrupted toy run (24 steps, checkpoints at 8, 16 and 24, seeds 0 and 1)."""
  d = tmp_path_factory.mktemp("finished")
  return train.train_and_evaluate(toy_config(), str(d)), d


def unfinished_copy(finished, tmp_path):
  """The finished run as a kill at its final checkpoint leaves it: no attention.npz, no result."""
  d = tmp_path / "run"
  shutil.copytree(finished[1], d)
  (d / "result.json").unlink()
  (d / "attention.npz").unlink()
  return d


def assert_same_result(got, want):
  for split in ("val", "test"):
    for metric in ("loss", "accuracy"):
      np.testing.assert_allclose(per_seed(got, split, metric), per_seed(want, split, metric), rtol=1e-6)
  assert got["stopped_at"] == want["stopped_at"] and got["best_step"] == want["best_step"]
  assert got["status"] == want["status"]


def logged_steps(d, split="train"):
  lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  return [line["step"] for line in lines if line["split"] == split]


def stamp(d):
  """(inode, mtime) of every file in ``d``: equal stamps mean nothing was rewritten."""
  return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(d):
  return sorted(p.name for p in d.rglob("*") if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name)


def test_killed_at_the_final_checkpoint_then_resumed(finished, tmp_path, caplog):
  d = tmp_path / "run"
  out = subprocess.run([sys.executable, "-c", KILL_AT_FINAL_CHECKPOINT, "train", f"--config={TOY}",
                        f"--workdir={d}"], capture_output=True, text=True, timeout=240, cwd=REPO, env=ENV)
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert checkpoints.steps(d / "checkpoints") == [16, 24]  # the two newest are kept
  assert not (d / "result.json").exists() and not (d / "attention.npz").exists() and not leftovers(d)
  final = stamp(d / "checkpoints" / "24")
  with caplog.at_level("WARNING"):
    resumed = train.train_and_evaluate(toy_config(), str(d))
  assert "stale lock" in caplog.text  # the killed process's lock file, taken over
  assert_same_result(resumed, finished[0])
  assert stamp(d / "checkpoints" / "24") == final  # reused, not rewritten
  assert logged_steps(d) == list(range(1, 25)) and logged_steps(d, "val") == [8, 16, 24]
  assert json.loads((d / "result.json").read_text()) == resumed
  assert not (d / runlock.LOCK_NAME).exists()


def test_early_stopping_on_a_checkpoint_step_finishes_and_reruns_the_same(tmp_path):
  cfg = toy_config(48, seeds=(0,), eval_every=4, checkpoint_every=4)
  cfg.train.early_stopping.patience = 1
  cfg.train.early_stopping.metrics = "loss"
  cfg.optim.learning_rate = 0.3
  first = train.train_and_evaluate(cfg, str(tmp_path))
  stop = first["stopped_at"][0]
  assert stop < 48 and checkpoints.latest_step(tmp_path / "checkpoints") == stop
  final = stamp(tmp_path / "checkpoints")
  for name in ("result.json", "attention.npz"):  # interrupted after the final checkpoint
    (tmp_path / name).unlink()
  again = train.train_and_evaluate(cfg, str(tmp_path))
  assert_same_result(again, first)
  assert stamp(tmp_path / "checkpoints") == final
  assert logged_steps(tmp_path, "val") == list(range(4, stop + 1, 4))


HOLD = """
import sys, time
from attnlab import runlock
with runlock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(120)
"""


def hold_in_another_process(d):
  d.mkdir(parents=True, exist_ok=True)
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE, text=True,
                          cwd=REPO, env=ENV)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_two_processes_on_one_run_dir(tmp_path, caplog):
  s = toy_sweep_of_one()
  run_dir = tmp_path / "runs" / sweep.expand(s)[0].id
  holder = hold_in_another_process(run_dir)
  try:
    with pytest.raises(runlock.RunBusy, match=f"in use by pid {holder.pid} on host "
                                               f"{socket.gethostname()}.*delete the lock file"):
      train.train_and_evaluate(toy_config(8), str(run_dir))
    assert sorted(p.name for p in run_dir.iterdir()) == [runlock.LOCK_NAME]  # nothing written
    counts = sweep.run_sweep(s, str(tmp_path), progress=False)
    assert counts == {"runs": 1, "trained": 0, "skipped": 0, "busy": 1}
    assert results.read_lines(tmp_path / "results.jsonl") == []
  finally:
    holder.kill()
    holder.wait()
    holder.stdout.close()
  with caplog.at_level("WARNING"):  # the holder died holding it: a stale lock
    counts = sweep.run_sweep(s, str(tmp_path), progress=False)
  assert f"stale lock of pid {holder.pid}" in caplog.text
  assert counts == {"runs": 1, "trained": 1, "skipped": 0, "busy": 0}
  lines = results.read_lines(tmp_path / "results.jsonl")
  assert sorted(results.key(r)[1] for r in lines) == [0, 1]
  # a second sweep that reaches the run after the first recorded it appends nothing
  run = sweep.expand(s)[0]
  assert not sweep._train_run(run, s, run_dir, tmp_path / "results.jsonl")  # noqa: SLF001
  assert results.read_lines(tmp_path / "results.jsonl") == lines
  assert logged_steps(run_dir) == list(range(1, 9))


def test_lock_without_flock_checks_the_recorded_owner(tmp_path, monkeypatch, caplog):
  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
  monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
  ended = subprocess.Popen(["true"])
  ended.wait()
  lock = tmp_path / runlock.LOCK_NAME
  lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # alive
  with pytest.raises(runlock.RunBusy, match=f"in use by pid {os.getppid()} on host"):
    with runlock.hold(tmp_path):
      pass
  lock.write_text(json.dumps({"pid": ended.pid, "host": socket.gethostname()}))  # gone: stale
  with caplog.at_level("WARNING"), runlock.hold(tmp_path):
    assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert f"stale lock of pid {ended.pid}" in caplog.text and not lock.exists()


def toy_sweep_of_one():
  c = ml_collections.ConfigDict()
  c.name, c.seeds = "toy", (0, 1)
  c.overrides = {"train": {"steps": 8, "attention_maps": False}}
  c.grids = [{"group": "g", "config": TOY, "fixed": {"model.kwargs.d_model": 8}}]
  return c


def truncate_checkpoint(d, step):
  for f in (d / "checkpoints" / str(step)).rglob("manifest.ocdbt"):
    with open(f, "r+b") as fh:
      fh.truncate(10)


def test_truncated_newest_checkpoint_is_set_aside(finished, tmp_path):
  d = unfinished_copy(finished, tmp_path)
  truncate_checkpoint(d, 24)
  out = attnlab("train", f"--config={TOY}", f"--workdir={d}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
  assert f"set aside as {d / 'checkpoints.corrupt-24'}, resuming from the previous" in out.stderr
  assert (d / "checkpoints.corrupt-24" / "default").is_dir()  # renamed, not deleted
  assert_same_result(json.loads((d / "result.json").read_text()), finished[0])
  assert logged_steps(d) == list(range(1, 25))  # steps 17..24 re-logged once


def test_every_checkpoint_damaged_starts_over(finished, tmp_path):
  d = unfinished_copy(finished, tmp_path)
  for step in (16, 24):
    truncate_checkpoint(d, step)
  resumed = train.train_and_evaluate(toy_config(), str(d))
  assert sorted(p.name for p in d.glob("checkpoints.corrupt-*")) == ["checkpoints.corrupt-16",
                                                                      "checkpoints.corrupt-24"]
  assert_same_result(resumed, finished[0])
  assert logged_steps(d) == list(range(1, 25))


def enospc_when_writing(monkeypatch, name):
  """Makes fsync fail with ENOSPC for files whose name contains ``name`` (a full disk)."""
  real = os.fsync

  def fsync(fd):
    if name in os.readlink(f"/proc/self/fd/{fd}"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(fd)
  monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the file of an fd in /proc")
def test_disk_full_while_finishing_leaves_nothing_half_written(finished, tmp_path, monkeypatch):
  d = unfinished_copy(finished, tmp_path)
  enospc_when_writing(monkeypatch, "result.json")
  with pytest.raises(OSError, match=f"no space left on device while writing {d / 'result.json'}$"):
    train.train_and_evaluate(toy_config(), str(d))
  assert not (d / "result.json").exists() and not leftovers(d)
  monkeypatch.undo()
  assert_same_result(train.train_and_evaluate(toy_config(), str(d)), finished[0])
  assert logged_steps(d) == list(range(1, 25))


def test_disk_full_in_a_checkpoint_names_it_and_leaves_no_partial_step(tmp_path, monkeypatch):
  def full_disk(manager, step, *args, **kwargs):  # orbax fails after starting its temporary step
    (tmp_path / f"{step}.orbax-checkpoint-tmp-123").mkdir()
    raise ValueError("UNKNOWN: Error writing local file: No space left on device [OS error: 28]")
  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(OSError, match=f"no space left on device while writing {tmp_path / '5'}$"):
    checkpoints.save(tmp_path, 5, {"w": np.ones(3, np.float32)})
  assert not leftovers(tmp_path) and checkpoints.steps(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the file of an fd in /proc")
def test_disk_full_on_the_command_line_is_one_line(tmp_path):
  code = ("import errno, os, sys\nfrom attnlab import cli\nreal = os.fsync\n"
          "def fsync(fd):\n  if 'sweep.json' in os.readlink(f'/proc/self/fd/{fd}'):\n"
          "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n  return real(fd)\n"
          "os.fsync = fsync\nsys.argv = ['attnlab', *sys.argv[1:]]\ncli.run()\n")
  out = subprocess.run([sys.executable, "-c", code, "sweep", f"--config={SMOKE}:tiny",
                        f"--workdir={tmp_path}", "--noprogress"], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=ENV)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.startswith(f"attnlab: error: no space left on device while writing "
                               f"{tmp_path / 'sweep.json'} ("), out.stderr[-2000:]
  assert out.stderr.count("\n") == 1  # one line
  assert list(tmp_path.iterdir()) == []  # no .sweep.json.PID.tmp


def test_a_diverging_seed_stops_and_is_reported_as_diverged(finished, tmp_path, monkeypatch):
  cfg = toy_config()
  with cfg.unlocked():
    cfg.task.kwargs.nan_seed, cfg.task.kwargs.nan_step = 1, 4  # seed 1's inputs are NaN from step 5 on
  result = train.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert result["status"] == ["ok", "diverged at step 5"] and result["stopped_at"] == [24, 5]
  test_acc = result["metrics"]["test"]["accuracy"]
  np.testing.assert_allclose(test_acc["per_seed"][0], per_seed(finished[0], "test", "accuracy")[0],
                             rtol=1e-6)  # the other seed is untouched
  assert test_acc["per_seed"][1] is None and test_acc["n"] == 1
  assert test_acc["mean"] == test_acc["per_seed"][0]
  assert "seed 1: diverged at step 5 (left out of the means)" in train.format_result(result)
  val_lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  # the last finite state is kept
  assert all(np.isfinite(line["loss"][1]) for line in val_lines if line["split"] == "val")
  s = toy_sweep_of_one()
  monkeypatch.setattr(train, "train_and_evaluate", lambda c, d: result)  # the run above, recorded
  sweep.run_sweep(s, str(tmp_path / "sweep"), progress=False)
  lines = results.read_lines(tmp_path / "sweep" / "results.jsonl")
  assert [(line["seed"], line["status"], line["metrics"]["test"]["accuracy"]) for line in lines] == [
      (0, "ok", test_acc["per_seed"][0]), (1, "diverged at step 5", None)]
  for seed in (0, 1):  # a variant whose seeds all diverged
    results.append_line(tmp_path / "sweep" / "results.jsonl", {
        **lines[1], "seed": seed, "run": {"group": "g", "task": "runner_toy", "model.kwargs.d_model": 4}})
  text = report.write(str(tmp_path / "sweep"), plots=True)
  rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| runner_toy")}
  cells = rows["d_model=8"].split(" | ")  # task, variant, test, p, val, lr, steps, AUC, zeros, seeds
  assert cells[2] == f"{100 * test_acc['mean']:.1f} ± –" and cells[-1] == "1 (+1 diverged) |"
  assert cells[4] == f"{100 * result['metrics']['val']['accuracy']['mean']:.1f}"
  assert cells[7] == f"{100 * result['auc'][0]:.1f} ± –"  # the diverged seed has no curve area
  assert rows["d_model=4"].split(" | ")[2:5] == ["diverged", "", "–"]
  assert rows["d_model=4"].endswith("| 0 (+2 diverged) |")
  assert not any("★" in row or "≈" in row for row in rows.values())  # no rival with values to rank
  assert "Seeds that diverged (non-finite training loss) are counted in the seeds column" in text
