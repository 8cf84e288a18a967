"""A run directory's files across restarts: its config.json (a different config is refused),
metrics.jsonl cut back to the resumed step, result.json as the mark of a finished run (attnlab.train).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import logging

from attnlab import config as config_lib
from attnlab import results


def check_config(workdir: pathlib.Path, cfg: dict[str, Any], *, write: bool) -> None:
  """Refuses a workdir whose config.json differs from ``cfg`` (or is unreadable); with ``write``
  (process 0) a new workdir gets ``cfg`` as its config.json."""
  path = workdir / "config.json"
  if path.exists():
    try:
      old = config_lib.with_added_sections(results.read_json(path))
    except ValueError as e:
      raise ValueError(f"workdir {str(workdir)!r}: config.json is unreadable ({e}); delete it to "
                       "start over, or use a new --workdir") from e
    if old != cfg:
      diff = sorted(_diff(old, cfg))
      raise ValueError(f"workdir {str(workdir)!r} holds a run of a different config (differs in: "
                       f"{', '.join(diff[:10])}); use a new --workdir or delete it")
  elif write:
    results.atomic_write_json(path, cfg)


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = set()
    for k in set(a) | set(b):
      out |= _diff(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else {f"{prefix}{k}"}
    return out
  return set() if a == b else {prefix.rstrip(".")}


def _step_of(line: str) -> int | None:
  try:
    return json.loads(line)["step"] if line.endswith("\n") else None
  except (ValueError, TypeError, KeyError):
    return None


def trim_metrics(path: pathlib.Path, step: int) -> None:
  """Drops metric lines after ``step`` (a resumed run re-logs them) and torn or garbled lines."""
  if path.exists():
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if (at := _step_of(ln)) is not None and at <= step]
    results.atomic_write_text(path, "".join(keep))


def finished(workdir: pathlib.Path) -> dict[str, Any] | None:
  """The result of a finished run (its result.json), or None."""
  path = workdir / "result.json"
  if not path.exists():
    return None
  try:
    return results.read_json(path)
  except ValueError:
    logging.warning("%s is unreadable: finishing the run again", path)
    return None
