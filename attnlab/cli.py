"""The ``attnlab`` command line (absl flags; ml_collections config files).

    attnlab train  --config=configs/TASK.py[:arg] --workdir=DIR [--config.a.b=value ...]
    attnlab sweep [--config=configs/sweeps/NAME.py] --workdir=DIR [--shard=i/n] [--noprogress]
    (train/sweep on several hosts: the same command on every host with --distributed)
    attnlab report DIR [--metric=accuracy] [--split=test] [--noplots]
    attnlab download planetoid NAME [NAME ...] [--allow_unverified]
    attnlab list

``sweep`` without ``--config`` runs ``configs/sweeps/categories.py``. Config paths are taken as
given, else relative to the repository (so ``configs/...`` works from any directory with an
editable install). Output is plain messages; ``--verbosity=0`` (or higher) brings back absl's
prefixes and the libraries' start-up logs.
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import re
import sys
import textwrap

from absl import app, flags, logging
from ml_collections import config_flags

# command -> (usage, what it does, its flags)
_COMMANDS = {
    "train": ("attnlab train --config=configs/TASK.py[:arg] --workdir=DIR [--config.KEY=VALUE ...]",
              "Trains one config (its seeds vmapped together); resumes from DIR's checkpoints.",
              ("config", "workdir", "distributed", "coordinator_address", "num_processes", "process_id",
               "distributed_timeout", "verbosity")),
    "sweep": ("attnlab sweep [--config=configs/sweeps/NAME.py] --workdir=DIR [--shard=i/n] [--jobs=N]",
              "Runs every (run, seed) of a sweep not yet in DIR/results.jsonl, then writes the report "
              "(default sweep: configs/sweeps/categories.py).",
              ("config", "workdir", "shard", "jobs", "progress", "plots", "distributed",
               "coordinator_address", "num_processes", "process_id", "distributed_timeout", "verbosity")),
    "report": ("attnlab report DIR [--metric=accuracy] [--split=test] [--noplots]",
               "Writes DIR/report.md (mean ± 95% CI over seeds) and DIR/plots/ from DIR/results.jsonl.",
               ("metric", "split", "plots")),
    "download": ("attnlab download planetoid NAME [NAME ...] [--allow_unverified]",
                 "Fetches Planetoid datasets (cora, citeseer, pubmed) into $ATTNLAB_DATA_DIR/planetoid "
                 "(default ~/.cache/attnlab), each file checked against its sha256.",
                 ("allow_unverified", "base_url")),
    "list": ("attnlab list", "Prints every registered member of every kind.", ()),
}
COMMANDS = tuple(_COMMANDS)
_USAGE = "usage:\n" + "\n".join(f"  {usage}" for usage, _, _ in _COMMANDS.values())

# New keys are accepted only where the config is open: a member's options under model.attention
# (*_kwargs, attnlab.config.OptionsDict; AttentionSpec checks their names). Everywhere else a new key
# is refused as before: config files lock themselves, and _parse checks every override's key.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the run or sweep.")
_SHARD = flags.DEFINE_string("shard", None, "sweep: run every n-th run, i/n (0 <= i < n).")
_JOBS = flags.DEFINE_integer("jobs", None, "sweep: worker processes training runs at once (default: the "
                             "CPU cores on a CPU backend, 1 on an accelerator or with --distributed).",
                             lower_bound=1)
_PROGRESS = flags.DEFINE_bool("progress", True, "sweep: show a progress bar.")
_METRIC = flags.DEFINE_string("metric", "accuracy", "report: the metric compared.")
_SPLIT = flags.DEFINE_string("split", "test", "report: the split compared (val or test).")
_PLOTS = flags.DEFINE_bool("plots", True, "report (and sweep's final report): write plots.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "train/sweep: call jax.distributed.initialize() "
                                 "first (multi-host: run the same command on every host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "with --distributed: HOST:PORT of process "
                                   "0 (default: from the cluster, e.g. SLURM, or $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "with --distributed: number of processes "
                                      "(default: from the cluster).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "with --distributed: this process's id, 0 writes "
                                   "the files (default: from the cluster).")
_DIST_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 100, "with --distributed: seconds without a "
                                     "heartbeat after which a process is taken as dead and the others stop.")
_ALLOW_UNVERIFIED = flags.DEFINE_bool("allow_unverified", False, "download: accept files that have no "
                                      "known sha256 in attnlab (ind.pubmed.allx) unchecked.")
_BASE_URL = flags.DEFINE_string("base_url", None, "download: fetch from this mirror of the Planetoid "
                                "data/ directory instead of the Planetoid authors' repository.")


class UsageError(ValueError):
  pass


def _list() -> str:
  from attnlab import registry  # pylint: disable=g-import-not-at-top
  lines = []
  for kind in registry.kinds():
    lines.append(f"{kind}: {', '.join(registry.names(kind))}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  args = argv[1:]
  if not args or args[0] not in COMMANDS:
    raise UsageError(f"unknown or missing command {args[0] if args else ''!r}; commands: "
                     f"{', '.join(COMMANDS)}\n{_USAGE}")
  command, rest = args[0], args[1:]
  if command == "list":
    print(_list())
  elif command == "download":
    _download(rest)
  elif command == "report":
    if len(rest) != 1:
      raise UsageError(f"report takes one directory, got {rest}\n{_USAGE}")
    from attnlab import report  # pylint: disable=g-import-not-at-top
    print(report.write(rest[0], metric=_METRIC.value, split=_SPLIT.value, plots=_PLOTS.value))
  else:
    if rest:
      raise UsageError(f"{command}: unexpected arguments {rest}\n{_USAGE}")
    if not _WORKDIR.value:
      raise UsageError(f"{command} needs --workdir=DIR\n{_USAGE}")
    if _DISTRIBUTED.value:
      from attnlab import parallel  # pylint: disable=g-import-not-at-top
      parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DIST_TIMEOUT.value)
    if command == "train":
      if _CONFIG.value is None:
        raise UsageError(f"train needs --config=configs/TASK.py\n{_USAGE}")
      from attnlab import train  # pylint: disable=g-import-not-at-top
      result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
      if not train.is_primary():
        return
      print(train.format_result(result))
    else:
      _sweep()


def _download(rest: list[str]) -> None:
  from attnlab.data import download  # pylint: disable=g-import-not-at-top
  if not rest or rest[0] != "planetoid" or len(rest) < 2:
    raise UsageError(f"download takes 'planetoid' and one or more of {', '.join(download.DATASETS)}, "
                     f"got {rest}\nusage: {_COMMANDS['download'][0]}")
  for name in rest[1:]:
    if name not in download.DATASETS:
      raise UsageError(f"download planetoid: unknown dataset {name!r}; valid: {', '.join(download.DATASETS)}")
  for name in rest[1:]:
    download.download_planetoid(name, allow_unverified=_ALLOW_UNVERIFIED.value,
                                base_url=_BASE_URL.value or download.PLANETOID_URL)


def _help(argv: list[str]) -> str | None:
  """Our usage for ``attnlab [COMMAND] --help`` (absl's own would list every library's flags)."""
  if not any(a in ("--help", "-h", "--helpshort", "-?", "help") for a in argv[1:]):
    return None
  command = next((a for a in argv[1:] if a in _COMMANDS), None)
  if command is None:
    width = max(map(len, _COMMANDS))
    lines = [f"usage: attnlab {{{','.join(_COMMANDS)}}} [flags]", "", "commands:"]
    lines += [textwrap.fill(what, 100, initial_indent=f"  {c:<{width}}  ",
                            subsequent_indent=" " * (width + 4))
              for c, (_, what, _) in _COMMANDS.items()]
    lines += ["", "`attnlab COMMAND --help` lists a command's flags; --helpfull lists every absl flag."]
    return "\n".join(lines)
  usage, what, names = _COMMANDS[command]
  lines = [f"usage: {usage}", "", textwrap.fill(what, 100)]
  if names:
    lines += ["", "flags:"]
    for name in names:
      flag = flags.FLAGS[name]
      text = _VERBOSITY_HELP if name == "verbosity" else flag.help
      shown = flag.default is not None and name != "verbosity"
      default = f" (default: {flag.default_as_str})" if shown else ""
      lines.append(textwrap.fill(f"--{name}: {text}{default}", 100, initial_indent="  ",
                                 subsequent_indent="      "))
  return "\n".join(lines)


_VERBOSITY_HELP = ("absl log level; when given (0 = info, 1 = debug), log lines keep absl's prefixes and "
                   "the libraries' start-up messages are shown too.")


def _quiet_logs() -> None:
  """Plain log lines and no library start-up noise, unless ``--verbosity`` was given."""
  if flags.FLAGS["verbosity"].present:
    return
  logging.get_absl_handler().setFormatter(std_logging.Formatter("%(message)s"))
  for name in ("jax", "orbax", "absl.flags"):
    std_logging.getLogger(name).setLevel(std_logging.WARNING)


def _sweep() -> None:
  from attnlab import config as config_lib  # pylint: disable=g-import-not-at-top
  from attnlab import report, sweep  # pylint: disable=g-import-not-at-top
  cfg = _CONFIG.value if _CONFIG.value is not None else config_lib.load_file(str(sweep.DEFAULT))
  shard = sweep.parse_shard(_SHARD.value)
  if _PROGRESS.value:
    logging.set_verbosity(logging.WARNING)
  from attnlab import workers  # pylint: disable=g-import-not-at-top
  jobs = 1 if _DISTRIBUTED.value else (_JOBS.value or workers.default_jobs())
  counts = workers.run(cfg, _WORKDIR.value, jobs=jobs, shard=shard, progress=_PROGRESS.value)
  from attnlab import train  # pylint: disable=g-import-not-at-top
  if not train.is_primary():
    return
  print(f"sweep {cfg.name}: {counts['runs']} runs in this shard, {counts['trained']} trained, "
        f"{counts['skipped']} already done")
  try:
    print(report.write(_WORKDIR.value, plots=_PLOTS.value))
  except report.NoResults as e:  # e.g. every run of this shard is held by another process
    print(f"attnlab: no report yet: {e}", file=sys.stderr)


def _resolve_config_args(argv: list[str]) -> list[str]:
  """``--config=configs/x.py[:arg]`` relative to the repo when not found from the cwd."""
  from attnlab import config as config_lib  # pylint: disable=g-import-not-at-top
  out = []
  for a in argv:
    m = re.fullmatch(r"--config=([^:]+)(:.*)?", a)
    if m:
      try:
        a = f"--config={config_lib.resolve_path(m.group(1))}{m.group(2) or ''}"
      except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    out.append(a)
  return out


def _bad_override(argv: list[str]) -> str | None:
  """The first ``--config.a.b=`` override whose key does not exist, explained."""
  from attnlab import config as config_lib  # pylint: disable=g-import-not-at-top
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None:
    return "--config.* overrides need --config=FILE"
  cfg = config_lib.load_file(path)
  for a in argv:
    m = re.fullmatch(r"--config\.([\w.]+)(=.*)?", a)
    if m:
      try:
        config_lib.check_key(cfg, m.group(1))
      except ValueError as e:
        return str(e)
  return None


def _bad_config_file(argv: list[str]) -> str | None:
  """Why the ``--config=`` file cannot be loaded (it raises, does not parse, lacks get_config)."""
  from attnlab import config as config_lib  # pylint: disable=g-import-not-at-top
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  try:
    if path is not None:
      config_lib.load_file(path)
  except (ValueError, OSError) as e:
    return _message(e)
  return None


def _parse(argv: list[str]) -> list[str]:
  text = _help(argv)
  if text is not None:
    print(text)
    sys.exit(0)
  try:
    argv = _resolve_config_args(argv)
    rest = flags.FLAGS(argv)
    bad = _bad_override(argv) if any(a.startswith("--config.") for a in argv) else None
    if bad:
      _die(bad)
    return rest
  except UsageError as e:
    _die(str(e))
  except Exception as e:  # pylint: disable=broad-except  (known kinds below; others re-raised)
    bad_file = _bad_config_file(argv)
    if bad_file:
      _die(bad_file)
    if isinstance(e, (flags.Error, ValueError, TypeError, OSError)):
      _die(_message(e))
    if isinstance(e, (AttributeError, KeyError)):
      _die(_bad_override(argv) or f"bad --config override: {e}")
    raise
  return []


def _message(e: BaseException) -> str:
  """One line for an expected error; OSErrors as their reason and file."""
  if not isinstance(e, OSError) or e.strerror is None:
    return str(e)
  if e.errno == errno.ENAMETOOLONG:
    return f"path too long (a path component may have at most 255 bytes): {e.filename}"
  return f"{e.strerror}: {e.filename}" if e.filename else e.strerror


def _die(message: str) -> None:
  print(f"attnlab: error: {message}", file=sys.stderr)
  sys.exit(2)


def _main(argv: list[str]) -> None:
  _quiet_logs()
  from attnlab.runlock import RunBusy  # pylint: disable=g-import-not-at-top
  try:
    main(argv)
  except (UsageError, ValueError, TypeError, OSError, RunBusy) as e:
    if os.environ.get("ATTNLAB_TRACEBACK"):
      raise
    _die(f"{_message(e)} (ATTNLAB_TRACEBACK=1 shows the traceback)")
  except Exception as e:  # pylint: disable=broad-except  (a multi-host run that lost a process)
    if not _DISTRIBUTED.value or os.environ.get("ATTNLAB_TRACEBACK"):
      raise
    _die_distributed(e)


def _die_distributed(e: BaseException) -> None:
  """Stops this process of a failed multi-host run at once: jax.distributed's shutdown at exit would
  wait in a barrier for the lost process, then abort."""
  import jax  # pylint: disable=g-import-not-at-top
  print(f"attnlab: error: process {jax.process_index()} of {jax.process_count()}: the distributed run "
        f"failed, most likely because another process died or lost contact: {type(e).__name__}: "
        f"{str(e)[:500]}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(3)  # pylint: disable=protected-access


def run() -> None:
  """The console-script entry point."""
  from attnlab import _hostmem as hostmem  # pylint: disable=g-import-not-at-top
  try:
    hostmem.keep_freed_host_memory()  # before JAX allocates anything (see attnlab/_hostmem.py)
  except ValueError as e:
    _die(str(e))
  app.run(_main, flags_parser=_parse)


if __name__ == "__main__":
  run()
