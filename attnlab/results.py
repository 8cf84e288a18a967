"""Result files: atomic JSON writes, the append-only ``results.jsonl`` of a sweep, statistics.

Atomicity. ``append_line`` writes a whole line with ONE ``os.write`` on a descriptor opened with
O_APPEND, then fsyncs: a process killed at any moment leaves either the full line or none (the
kernel completes a write() before delivering SIGKILL; POSIX appends land at the end of the file
even with several writers, e.g. shards of one sweep). A reader still tolerates a torn last line
(a crash of the machine mid-write) by skipping it; the next append first ends it with a newline.
Whole files (``result.json``, ``attention.npz``, reports, plots) are written by ``atomic_write``:
to a temporary file beside them, fsynced, renamed; the temporary file is removed if anything fails,
so a file that exists is complete. A full disk is reported as ``no space left on device while
writing FILE`` (``writing``).

Schema. A results line is ``{"run": {"group", "task", ...}, "seed": int, "metrics": {split:
{metric: number or null}}, "status": "ok" | "diverged at step N", ...}``; ``read_lines`` skips a
line that is torn, not JSON or not of this shape, with a warning naming the file, line and fault.
Optional fields (attnlab.tuning; lines written before them lack them): ``learning_rate`` (the rate
of ``metrics``), ``reach`` {"metric", "value"} with ``reach_step`` (int, or null: not reached) and
``auc`` (number or null), ``attention_sparsity`` (number or null), ``steps`` (the step budget, int),
``early_stopping`` (bool) and ``stopped_at`` (the step early stopping stopped the seed at, or the
budget), and for a
learning-rate grid
``select_metric`` and ``per_rate``: one {"learning_rate", "metrics", "status", "best_step",
"stopped_at", "reach_step", "auc"} per rate of the grid.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import warnings
from typing import IO, Any, Callable, Iterable, Iterator

import numpy as np

from attnlab.stats import mean_ci, t_quantile  # noqa: F401  (re-exported: their old home)
from attnlab.validate import is_number

STATUS_OK = "ok"  # a results line's status; otherwise "diverged at step N"
_DISK_FULL = "no space left on device while writing"


# Config sections renamed since results files were first written: old key prefix -> new. Lines read
# back (``read_lines``) carry the new names in their run point, so either spelling reads the same.
RENAMED_KEYS = {"task.knobs": "task.kwargs", "model.options": "model.kwargs"}


def current_key(key: str, renamed: dict[str, str] | None = None) -> str:
  """``key`` with a renamed section's old prefix replaced (``model.options.x`` -> ``model.kwargs.x``)."""
  for old, new in (renamed or RENAMED_KEYS).items():
    if key == old or key.startswith(old + "."):
      return new + key[len(old):]
  return key


def legacy_key(key: str) -> str:
  """The inverse of ``current_key`` (``model.kwargs.x`` -> ``model.options.x``)."""
  return current_key(key, {new: old for old, new in RENAMED_KEYS.items()})


def canonical(obj: Any) -> str:
  """Canonical JSON (sorted keys, no spaces): equal config points give equal strings."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def read_json(path: pathlib.Path) -> Any:
  return json.loads(pathlib.Path(path).read_text())


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or an error it was raised from) is a full disk (ENOSPC)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):  # e.g. tensorstore (orbax) errors carry only text
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def writing(path: pathlib.Path) -> Iterator[None]:
  """Re-raises a full disk inside the block as ``OSError(ENOSPC)`` naming ``path``."""
  try:
    yield
  except Exception as e:
    if is_disk_full(e) and not str(getattr(e, "strerror", "")).startswith(_DISK_FULL):
      raise OSError(errno.ENOSPC, f"{_DISK_FULL} {path}") from e
    raise


def atomic_write(path: pathlib.Path, write: Callable[[IO[bytes]], Any]) -> None:
  """Writes ``path`` with ``write(binary file)`` via a temporary file (see the module docstring)."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with writing(path):
      with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def atomic_write_text(path: pathlib.Path, text: str) -> None:
  atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: pathlib.Path, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def make_dir(path: pathlib.Path, what: str = "--workdir") -> pathlib.Path:
  """Creates directory ``path`` (and parents); a clear error if it is a file."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"{what} {str(path)!r} is a file, not a directory")
  with writing(path):
    path.mkdir(parents=True, exist_ok=True)
  return path


def append_line(path: pathlib.Path, record: dict[str, Any]) -> None:
  """Appends ``record`` as one JSON line, atomically (see the module docstring)."""
  data = (json.dumps(record, sort_keys=True) + "\n").encode()
  with writing(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      if os.fstat(fd).st_size > 0:
        with open(path, "rb") as f:
          f.seek(-1, os.SEEK_END)
          if f.read(1) != b"\n":  # a torn line from a machine crash: end it, keep ours whole
            data = b"\n" + data
      written = os.write(fd, data)
      if written != len(data):
        raise OSError(errno.ENOSPC, f"short write to {path}: {written} of {len(data)} bytes")
      os.fsync(fd)
    finally:
      os.close(fd)


def read_lines(path: pathlib.Path) -> list[dict[str, Any]]:
  """The valid results lines of ``path``; others are skipped with a warning (module docstring)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  out = []
  for i, line in enumerate(path.read_text().splitlines(keepends=True)):
    if not line.strip():
      continue
    fault = None if line.endswith("\n") else "no newline at its end"
    try:
      record = json.loads(line)
    except ValueError:
      fault = fault or "not valid JSON"
    if fault:
      warnings.warn(f"{path}:{i + 1}: skipping an incomplete line ({fault})")
      continue
    fault = schema_fault(record)
    if fault:
      warnings.warn(f"{path}:{i + 1}: skipping a malformed results line: {fault}")
      continue
    out.append({**record, "run": {current_key(k): v for k, v in record["run"].items()}})
  return out


def schema_fault(record: Any) -> str | None:
  """What is wrong with a results line (the schema of the module docstring), or None."""
  if not isinstance(record, dict):
    return f"expected a JSON object, got {type(record).__name__}"
  missing = [k for k in ("run", "seed", "metrics") if k not in record]
  if missing:
    return f"missing {', '.join(map(repr, missing))}"
  run, seed, metrics = record["run"], record["seed"], record["metrics"]
  if not isinstance(run, dict) or not all(isinstance(run.get(k), str) for k in ("group", "task")):
    return "'run' must be an object with string 'group' and 'task'"
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    return f"'seed' must be an int >= 0, got {seed!r}"
  if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
    return "'metrics' must be an object of splits, each an object of metrics"
  fault = _metrics_fault(metrics, "metric ")
  if fault:
    return fault
  if not isinstance(record.get("status", STATUS_OK), str):
    return f"'status' must be a string, got {record['status']!r}"
  return _optional_fault(record, "") or _per_rate_fault(record.get("per_rate"))


def _metrics_fault(metrics: dict[str, Any], where: str) -> str | None:
  for split, per in metrics.items():
    for name, value in per.items():
      if value is not None and not is_number(value):
        return f"{where}{split}.{name} must be a number or null, got {value!r}"
  return None


def _optional_fault(record: dict[str, Any], where: str) -> str | None:
  """The optional fields of the module docstring, where present, have their types."""
  for name, ok, what in (("learning_rate", is_number, "a number"),
                         ("reach_step", lambda v: v is None or (is_number(v) and isinstance(v, int)),
                          "an int or null"),
                         ("auc", lambda v: v is None or is_number(v), "a number or null"),
                         ("steps", lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),
                         ("early_stopping", lambda v: isinstance(v, bool), "a bool"),
                         ("stopped_at", lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),
                         ("attention_sparsity", lambda v: v is None or is_number(v), "a number or null"),
                         ("reach", lambda v: isinstance(v, dict) and isinstance(v.get("metric"), str)
                          and (v.get("value") is None or is_number(v["value"])),
                          'an object {"metric": str, "value": number or null}')):
    if name in record and not ok(record[name]):
      return f"{where}'{name}' must be {what}, got {record[name]!r}"
  return None


def _per_rate_fault(per_rate: Any) -> str | None:
  if per_rate is None:
    return None
  if not isinstance(per_rate, list) or not per_rate:
    return f"'per_rate' must be a non-empty list, got {per_rate!r}"
  for i, entry in enumerate(per_rate):
    where = f"per_rate[{i}]"
    if not isinstance(entry, dict) or not is_number(entry.get("learning_rate")):
      return f"{where} must be an object with a number 'learning_rate'"
    metrics = entry.get("metrics")
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
      return f"{where}.metrics must be an object of splits, each an object of metrics"
    fault = _metrics_fault(metrics, f"{where}.metrics.") or _optional_fault(entry, f"{where}.")
    if fault:
      return fault
    if not isinstance(entry.get("status", STATUS_OK), str):
      return f"{where}.status must be a string, got {entry['status']!r}"
  return None


def minimised(metric: str) -> bool:
  """Whether smaller is better for ``metric`` (losses, errors, perplexities); else larger is."""
  return "loss" in metric or "error" in metric or "perplexity" in metric


def diverged_status(step: int) -> str:
  return f"diverged at step {step}"


def key(record: dict[str, Any]) -> tuple[str, int]:
  """The identity of a result line: (canonical run point, seed)."""
  return canonical(record["run"]), int(record["seed"])


def dedupe(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  """First line per (run, seed); duplicates (e.g. a shard run twice at once) are warned about."""
  seen, out = set(), []
  for r in records:
    k = key(r)
    if k in seen:
      warnings.warn(f"duplicate result for run {k[0]} seed {k[1]}: keeping the first")
      continue
    seen.add(k)
    out.append(r)
  return out


def summarize(per_metric: dict[str, Any], ok: Iterable[bool] | None = None) -> dict[str, dict[str, Any]]:
  """{metric: per-seed values} -> {metric: {per_seed, mean, std, n}} over the seeds that are ``ok``.

  A seed that is not ok (diverged) is ``None`` in ``per_seed`` and left out of mean and std (ddof=1,
  0 for one seed; both None when no seed is ok); ``n`` counts the seeds in them.
  """
  out = {}
  for name, values in per_metric.items():
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    keep = np.ones(v.shape, bool) if ok is None else np.asarray(list(ok), bool)
    kept = v[keep]
    out[name] = {"per_seed": [float(x) if k else None for x, k in zip(v, keep)],
                 "mean": float(kept.mean()) if kept.size else None,
                 "std": (float(kept.std(ddof=1)) if kept.size > 1 else 0.0) if kept.size else None,
                 "n": int(kept.size)}
  return out


def learning_curves(run_dir: pathlib.Path, metric: str, rate_index: int = 0,
                    num_rates: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
  """(steps, mean over seeds of the val metric) from a run's metrics.jsonl, at rate ``rate_index``
  of a grid of ``num_rates`` (its members are rate-major: attnlab.train)."""
  path = run_dir / "metrics.jsonl"
  if not path.exists():
    return None
  pts = []
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
      if r.get("split") == "val" and metric in r:
        per_member = np.asarray(r[metric], np.float64).reshape(num_rates, -1)
        pts.append((int(r["step"]), float(np.mean(per_member[rate_index]))))
    except (ValueError, TypeError, KeyError, AttributeError):  # a torn line of a killed run
      continue
  if not pts:
    return None
  steps, values = zip(*pts)
  return np.asarray(steps), np.asarray(values)
