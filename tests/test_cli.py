"""The ``attnlab`` command: list, train, sweep killed and resumed, report, clear errors."""

import collections
import json
import os
import pathlib
import platform
import re
import signal
import subprocess
import sys
import time

import jax
import pytest

from attnlab import config as config_lib, results, sweep

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
TOY = str(HERE / "runner_toy.py")
SMOKE = REPO / "configs" / "sweeps" / "smoke.py"


# Subprocesses share the tests' compilation cache (tests/conftest.py), not the user's ~/.cache, and
# import this checkout's attnlab from any cwd (not another copy installed in the environment).
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "ATTNLAB_CACHE_DIR": jax.config.jax_compilation_cache_dir,
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def attnlab(*args, timeout=240, cwd=None):
  return subprocess.run([sys.executable, "-m", "attnlab.cli", *args], capture_output=True, text=True,
                        timeout=timeout, cwd=cwd or REPO, env=ENV)


def test_list_prints_every_kind():
  out = attnlab("list")
  assert out.returncode == 0, out.stderr
  kinds = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
  assert {"score", "normalizer", "target", "model", "task"} <= set(kinds)
  assert "additive" in kinds["score"].split(", ") and "softmax" in kinds["normalizer"].split(", ")


def test_train_writes_result_and_config_paths_resolve_from_anywhere(tmp_path, monkeypatch):
  out = attnlab("train", f"--config={TOY}:8", f"--workdir={tmp_path}", "--config.train.seeds=(0,1,2)",
                "--config.model.attention.normalizer=sigmoid",  # a member's option: a new key, a float
                "--config.model.attention.normalizer_kwargs.bias=-2.0", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  attention = json.loads((tmp_path / "config.json").read_text())["model"]["attention"]
  assert attention["normalizer"] == "sigmoid" and attention["normalizer_kwargs"] == {"bias": -2.0}
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["seeds"] == [0, 1, 2] and len(result["metrics"]["test"]["accuracy"]["per_seed"]) == 3
  assert "test: " in out.stdout
  # plain log lines: no absl "I1201 14:28:38.97 ... train.py:234]" prefixes, no backend start-up noise
  assert "step 8: val accuracy" in out.stderr and not re.search(r"^[IWE]\d{4} ", out.stderr, re.M)
  assert "initialize backend" not in out.stderr
  monkeypatch.chdir(tmp_path)
  assert config_lib.resolve_path("configs/sweeps/smoke.py") == SMOKE  # from any cwd


@pytest.mark.parametrize("args, message", [
    (["train", f"--config={TOY}", "--workdir=W", "--config.train.sead=3"],
     "unknown key 'train.sead'.*valid: .*seeds.*steps"),
    (["train", f"--config={TOY}", "--workdir=W", "--config.train.steps=many"], "train.steps"),
    (["train", f"--config={TOY}", "--workdir=W", "--config.optim.name=adagrad"], "adam, adamw, sgd"),
    (["train", f"--config={TOY}", "--workdir=W", "--config.model.attention.score=additive",
      "--config.model.attention.score_kwargs.hiden=3"],
     r"model.attention.score_kwargs.hiden: unknown option of score 'additive'; its options: hidden"),
    (["train", f"--config={TOY}", "--workdir=W", "--config.model.kwargs.score=dot"],
     "unknown key 'model.kwargs.score'.*the attention category is model.attention.score"),
    (["train", f"--config={TOY}", "--workdir=W", "--config.task.knobs.eval_size=8"],
     "config: 'task.knobs.eval_size' is now 'task.kwargs.eval_size'"),
    (["train", "--config=configs/nope.py", "--workdir=W"], "config file 'configs/nope.py' not found"),
    (["fly"], "unknown or missing command 'fly'"),
    (["sweep", f"--config={SMOKE}", "--workdir=W", "--shard=3/2"], "--shard '3/2'"),
    (["train", f"--config={TOY}", "--workdir=W", "--config.optim.learning_rate=nan"],
     r"config: optim.learning_rate must be a finite number, got nan \(valid range \(0, inf\)\)"),
    (["train", f"--config={TOY}", "--workdir=W", "--config.optim.b2=1.5"],
     r"config: optim.b2=1.5 is out of range; valid: \[0, 1\)"),
    (["train", f"--config={TOY}", f"--workdir=W/{'a' * 256}"],
     "path too long \\(a path component may have at most 255 bytes\\): .*/w/aaaa"),
])
def test_bad_input_gives_a_clear_error(args, message, tmp_path):
  args = [a.replace("=W", f"={tmp_path / 'w'}") for a in args]
  out = attnlab(*args, timeout=120)
  assert out.returncode == 2, (out.stdout, out.stderr[-2000:])
  assert "Traceback" not in out.stderr
  assert re.search(message, out.stderr), out.stderr[-2000:]
  assert not (tmp_path / "w" / "result.json").exists()


def test_verbosity_brings_back_absl_prefixes(tmp_path):
  out = attnlab("train", f"--config={TOY}:4", f"--workdir={tmp_path}", "--verbosity=0")
  assert out.returncode == 0, out.stderr[-3000:]
  assert re.search(r"^I\d{4} .*step 4: val accuracy", out.stderr, re.M), out.stderr[-2000:]


def test_help_lists_the_commands_and_a_commands_main_flags():
  out = attnlab("--help")
  assert out.returncode == 0 and out.stdout.startswith("usage: attnlab {train,sweep,report,download,list}")
  commands = ("train", "sweep", "report", "download", "list")
  assert all(re.search(rf"^  {c} +\w", out.stdout, re.M) for c in commands)
  out = attnlab("train", "--help")
  assert out.returncode == 0 and out.stdout.startswith("usage: attnlab train --config=")
  flags_listed = re.findall(r"^  --(\w+):", out.stdout, re.M)
  assert flags_listed == ["config", "workdir", "distributed", "coordinator_address", "num_processes",
                          "process_id", "distributed_timeout", "verbosity"]  # not absl's flag dump


@pytest.mark.parametrize("source, extra, message", [
    ("raise RuntimeError('boom')\n", [], "config file '.*/bad.py' raised RuntimeError: boom"),
    ("def get_config(:\n", [], "config file '.*/bad.py': syntax error at line 1: invalid syntax"),
    ("x = 1\n", ["--config.train.steps=3"], r"config file '.*/bad.py' has no get_config\(arg=None\)"),
    ("def get_config():\n  return {}['task']\n", [],
     r"config file '.*/bad.py': get_config\(None\) raised KeyError: 'task'"),
])
def test_broken_config_files_are_one_clear_line(source, extra, message, tmp_path):
  (tmp_path / "bad.py").write_text(source)
  out = attnlab("train", f"--config={tmp_path / 'bad.py'}", f"--workdir={tmp_path / 'w'}", *extra,
                timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert re.fullmatch(f"attnlab: error: {message}\n", out.stderr), out.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def test_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "file").write_text("mine")
  out = attnlab("train", f"--config={TOY}", f"--workdir={tmp_path / 'file'}", timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.startswith(f"attnlab: error: --workdir '{tmp_path / 'file'}' is a file, not a directory")
  assert out.stderr.count("\n") == 1  # one line
  assert (tmp_path / "file").read_text() == "mine"


def test_sweep_killed_after_first_line_then_resumed(tmp_path):
  workdir = tmp_path / "sweep"
  args = ["sweep", f"--config={SMOKE}:tiny", f"--workdir={workdir}", "--noprogress", "--noplots"]
  proc = subprocess.Popen([sys.executable, "-m", "attnlab.cli", *args], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
  res = workdir / "results.jsonl"
  deadline = time.time() + 200
  while time.time() < deadline and proc.poll() is None:
    if res.exists() and res.read_text().count("\n") >= 1:
      break
    time.sleep(0.02)
  if proc.poll() is not None:
    pytest.fail(f"sweep ended before it could be killed: {proc.stderr.read()[-2000:]}")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc.stderr.close()
  first = results.read_lines(res)
  assert len(first) >= 1
  out = attnlab(*args, timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  runs = sweep.expand(config_lib.load_file(str(SMOKE), "tiny"))
  assert len(runs) >= 2
  want = {(results.canonical(r.point), s) for r in runs for s in runs[0].config.train.seeds}
  lines = (workdir / "results.jsonl").read_text().splitlines()
  counts = collections.Counter(results.key(json.loads(line)) for line in lines)
  assert set(counts) == want and set(counts.values()) == {1}  # every (run, seed) exactly once
  assert all(r in [json.loads(line) for line in lines] for r in first)  # nothing lost or rewritten
  assert "| task | variant |" in out.stdout and (workdir / "report.md").exists()


_FAULTS = """
import ctypes, resource
from attnlab import _hostmem as hostmem
applied = hostmem.keep_freed_host_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def faults(n=64 * 2**20):  # a 64 MB block, above glibc's largest mmap threshold (32 MB)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, faults(), faults())
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="attnlab._hostmem tunes glibc's malloc only")
@pytest.mark.parametrize("setting", ["default", "off"])
def test_freed_host_memory_is_reused_without_page_faults(setting):
  env = {k: v for k, v in ENV.items() if not k.startswith("MALLOC_")}
  if setting == "off":
    env["ATTNLAB_HOST_MALLOC"] = "off"
  out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  applied, first, second = out.stdout.split()
  pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
  assert int(first) > pages // 2  # the first use of the block faults its pages in
  if setting == "off":  # glibc's default: the freed block went back to the OS, reuse faults again
    assert applied == "False" and int(second) > pages // 2
  else:  # kept: the same memory is reused without a page fault
    assert applied == "True" and int(second) < pages // 20


def test_bad_host_malloc_setting_is_refused_by_name():
  env = {**ENV, "ATTNLAB_HOST_MALLOC": "of"}
  out = subprocess.run([sys.executable, "-m", "attnlab.cli", "list"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=120)
  assert out.returncode == 2
  assert "ATTNLAB_HOST_MALLOC='of'" in out.stderr and "valid values are on," in out.stderr
  assert ", off," in out.stderr
