"""Result files: atomic JSON writes, the append-only ``results.jsonl`` of a sweep, statistics.

Atomicity. ``append_line`` writes a whole line with ONE ``os.write`` on a descriptor opened with
O_APPEND, then fsyncs: a process killed at any moment leaves either the full line or none (the
kernel completes a write() before delivering SIGKILL; POSIX appends land at the end of the file
even with several writers, e.g. shards of one sweep). A reader still tolerates a torn last line
(a crash of the machine mid-write) by skipping it; the next append first ends it with a newline.
Whole files (``result.json``, ``sweep.json``) are written to a temporary file, fsynced, renamed.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import warnings
from typing import Any, Iterable

import numpy as np


def canonical(obj: Any) -> str:
  """Canonical JSON (sorted keys, no spaces): equal config points give equal strings."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def read_json(path: pathlib.Path) -> Any:
  return json.loads(pathlib.Path(path).read_text())


def atomic_write_json(path: pathlib.Path, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_write_text(path: pathlib.Path, text: str) -> None:
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def append_line(path: pathlib.Path, record: dict[str, Any]) -> None:
  """Appends ``record`` as one JSON line, atomically (see the module docstring)."""
  data = (json.dumps(record, sort_keys=True) + "\n").encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    if os.fstat(fd).st_size > 0:
      with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":  # a torn line from a machine crash: end it, keep ours whole
          data = b"\n" + data
    written = os.write(fd, data)
    if written != len(data):
      raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
    os.fsync(fd)
  finally:
    os.close(fd)


def read_lines(path: pathlib.Path) -> list[dict[str, Any]]:
  """The complete JSON lines of ``path`` (a torn or unparsable line is skipped with a warning)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  out = []
  for i, line in enumerate(path.read_text().splitlines(keepends=True)):
    try:
      if not line.endswith("\n"):
        raise ValueError("no newline")
      if line.strip():
        out.append(json.loads(line))
    except ValueError:
      warnings.warn(f"{path}:{i + 1}: skipping an incomplete line")
  return out


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


def summarize(per_metric: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """{metric: per-seed values} -> {metric: {per_seed, mean, std}}, std with ddof=1 (0 for one seed)."""
  out = {}
  for name, values in per_metric.items():
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    out[name] = {"per_seed": v.tolist(), "mean": float(v.mean()),
                 "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}
  return out


def t_quantile(p: float, df: int) -> float:
  """Student-t quantile t_{p, df} (bisection on the CDF via the regularised incomplete beta)."""
  if not 0.5 <= p < 1 or df < 1:
    raise ValueError(f"t_quantile: need 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
  from scipy import special  # pylint: disable=g-import-not-at-top  (scipy comes with jax)

  def cdf(t: float) -> float:
    return 1.0 - 0.5 * special.betainc(df / 2.0, 0.5, df / (df + t * t))

  lo, hi = 0.0, 1.0
  while cdf(hi) < p:
    hi *= 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
  return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, int]:
  """(mean, half-width of the Student-t ``level`` CI, n); half-width NaN for n < 2."""
  v = np.asarray(list(values), dtype=np.float64)
  n = v.size
  if n == 0:
    return math.nan, math.nan, 0
  if n < 2:
    return float(v.mean()), math.nan, 1
  half = t_quantile(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
  return float(v.mean()), float(half), n
