"""Two processes on 127.0.0.1 as the hosts of one data-parallel ``attnlab train --distributed`` run
(jax.distributed, CPU collectives over gloo, one CPU device each): the same metrics as one process,
only process 0 writes, and a killed process stops the other with a clear error in bounded time."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
TOY = str(HERE / "runner_toy.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "ATTNLAB_CACHE_DIR": jax.config.jax_compilation_cache_dir,
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
ENV["XLA_FLAGS"] = " ".join(  # one device per process (conftest's compile flags kept)
    f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
TIMEOUT_S = 5  # --distributed_timeout: heartbeats missed this long mark a process dead


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(tmp, workdir, config, port):
  """The two processes, each recording the files it writes (tests/multihost_worker.py)."""
  return [subprocess.Popen(
      [sys.executable, str(HERE / "multihost_worker.py"), str(tmp / f"writes{i}.json"), "train",
       f"--config={config}", f"--workdir={workdir}", "--distributed",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       f"--distributed_timeout={TIMEOUT_S}"],
      cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(procs, timeout):
  """(returncode, stderr) of each process; any still running after ``timeout`` s is killed."""
  deadline, out = time.monotonic() + timeout, []
  try:
    for p in procs:
      _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
      out.append((p.returncode, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return out


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_numbers(a, b, where):
  if isinstance(a, dict):
    assert set(a) == set(b), where
    for k in a:
      _assert_same_numbers(a[k], b[k], f"{where}.{k}")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      _assert_same_numbers(x, y, f"{where}[{i}]")
  elif isinstance(a, float):  # summation order differs (the gradient all-reduce): fp32 rounding
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=where)
  else:
    assert a == b, where


def test_two_processes_equal_one_and_only_process_0_writes(tmp_path):
  one = subprocess.run([sys.executable, "-m", "attnlab.cli", "train", f"--config={TOY}",
                        f"--workdir={tmp_path / 'one'}"], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=240)
  assert one.returncode == 0, one.stderr[-3000:]
  workdir = tmp_path / "two"
  done = _finish(_start(tmp_path, workdir, TOY, _free_port()), timeout=240)
  for i, (rc, err) in enumerate(done):
    assert rc == 0, f"process {i}: {err[-3000:]}"
  two, ref = _metrics(workdir), _metrics(tmp_path / "one")
  assert [(m["step"], m["split"]) for m in two] == [(m["step"], m["split"]) for m in ref]
  for a, b in zip(two, ref):
    _assert_same_numbers(a, b, f"metrics step {a['step']} {a['split']}")
  r2, r1 = (json.loads((d / "result.json").read_text()) for d in (workdir, tmp_path / "one"))
  assert (r2["devices"], r1["devices"]) == (2, 1)  # really data-parallel over the two processes
  _assert_same_numbers(r2["metrics"], r1["metrics"], "result.json metrics")
  writes = [json.loads((tmp_path / f"writes{i}.json").read_text()) for i in range(2)]
  inside = lambda i: [p for p in writes[i] if not os.path.isabs(p) or p.startswith(str(workdir) + os.sep)]
  assert {"metrics.jsonl", "checkpoints"} <= {pathlib.Path(p).name for p in inside(0)}
  assert inside(1) == [], f"process 1 wrote {inside(1)}"  # (it may make the shared workdir itself)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGSTOP"])
def test_lost_process_stops_the_other_with_a_clear_error(tmp_path, sig):
  """SIGKILL: process 1 dies (its sockets close: the next collective fails, attnlab's error);
  SIGSTOP: process 1 hangs (no heartbeats: after --distributed_timeout jax stops process 0)."""
  workdir = tmp_path / "w"
  procs = _start(tmp_path, workdir, f"{TOY}:100000", _free_port())  # far more steps than it will run
  try:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and procs[0].poll() is None:
      log = workdir / "metrics.jsonl"
      if log.exists() and log.read_text().count('"split": "train"') >= 16:  # training is under way
        break
      time.sleep(0.2)
    assert procs[0].poll() is None and procs[1].poll() is None, "a process stopped before the signal"
    procs[1].send_signal(getattr(signal, sig))
    lost_at = time.monotonic()
    (rc, err), = _finish(procs[:1], timeout=20 * TIMEOUT_S)
    waited = time.monotonic() - lost_at
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()  # SIGKILL ends a stopped process too
        p.communicate()
  assert waited < 4 * TIMEOUT_S, f"process 0 took {waited:.0f} s to stop"
  assert rc != 0
  assert re.search(r"the distributed run failed|another task died.*stopped sending heartbeats", err,
                   re.DOTALL), err[-3000:]
  assert not (workdir / "result.json").exists()
