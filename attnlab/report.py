"""``attnlab report DIR``: the comparison table of a sweep, and its plots.

Rows are grouped by the category compared (the sub-grid's ``group``) and task; each row is a
variant with the mean ± half-width of the 95% Student-t confidence interval over seeds
(t_{0.975, n-1} · s / √n, s with ddof=1). Within every (category, task) block the best mean is
marked ★, and rows whose difference from the best is not significant (Welch's t-test, p ≥ 0.05)
are marked ≈: those variants do not differ on this evidence. Seeds that diverged (a non-finite
training loss) are counted in the seeds column and left out of mean, CI and test; a variant whose
seeds all diverged shows "diverged". Written to ``DIR/report.md``; an unknown metric or split, or
no results, is an error that leaves an existing report as it is.

Plots (matplotlib, the ``plots`` extra, imported only here) go to ``DIR/plots/``: the metric per
variant per task (``<group>.png``), val learning curves from each run's metrics.jsonl
(``curves_<group>.png``), and attention maps of one val example per variant
(``attention_<group>_<task>.png``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import numpy as np

from attnlab import results
from attnlab.sweep import label


@dataclasses.dataclass
class Row:
  group: str
  task: str
  variant: str
  run_id: str
  values: list[float]
  mean: float
  ci: float
  val_mean: float
  diverged: int = 0
  mark: str = ""


class NoResults(ValueError):
  """The workdir has no valid results lines (nothing to report)."""


def load(workdir: pathlib.Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  workdir = pathlib.Path(workdir)
  path = workdir / "results.jsonl"
  if not path.exists():
    raise NoResults(f"{str(workdir)!r} has no results.jsonl: is it a sweep workdir?")
  meta_path = workdir / "sweep.json"
  meta = results.read_json(meta_path) if meta_path.exists() else {"name": workdir.name}
  return meta, results.dedupe(results.read_lines(path))


def welch_p(a: list[float], b: list[float]) -> float:
  """Two-sided p-value of Welch's t-test (NaN with fewer than 2 values per side)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < 2 or b.size < 2:
    return math.nan
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  if va + vb == 0:
    return 1.0 if a.mean() == b.mean() else 0.0
  t = abs(a.mean() - b.mean()) / math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
  from scipy import special  # pylint: disable=g-import-not-at-top
  return float(special.betainc(df / 2, 0.5, df / (df + t * t)))


def check_choice(records: list[dict[str, Any]], metric: str, split: str) -> None:
  """ValueError naming the valid splits or metrics if ``split`` or ``metric`` is not in ``records``."""
  splits = sorted({s for r in records for s in r["metrics"]})
  if split not in splits:
    raise ValueError(f"report: unknown split {split!r}; the results have: {', '.join(splits)}")
  metrics = sorted({m for r in records for m in r["metrics"].get(split, {})})
  if metric not in metrics:
    raise ValueError(f"report: unknown metric {metric!r} for split {split!r}; the results have: "
                     f"{', '.join(metrics)}")


def _ok(record: dict[str, Any]) -> bool:
  return record.get("status", results.STATUS_OK) == results.STATUS_OK


def _values(recs: list[dict[str, Any]], split: str, metric: str) -> list[float]:
  return [r["metrics"][split][metric] for r in recs
          if _ok(r) and r["metrics"].get(split, {}).get(metric) is not None]


def rows(records: list[dict[str, Any]], metric: str = "accuracy", split: str = "test") -> list[Row]:
  """One row per run point, in first-seen order, with the marks of the module docstring."""
  by_run: dict[str, list[dict[str, Any]]] = {}
  for r in records:
    by_run.setdefault(results.canonical(r["run"]), []).append(r)
  out = []
  for recs in by_run.values():
    point = recs[0]["run"]
    values, diverged = _values(recs, split, metric), sum(not _ok(r) for r in recs)
    if not values and not diverged:
      continue
    mean, ci, _ = results.mean_ci(values)
    val = _values(recs, "val", metric)
    out.append(Row(point["group"], point["task"], label(point), recs[0].get("run_id", ""), values, mean,
                   ci, float(np.mean(val)) if val else math.nan, diverged))
  lower_better = "loss" in metric
  for block in _blocks(out).values():
    block = [r for r in block if r.values]
    if not block:
      continue
    best = min(block, key=lambda r: r.mean) if lower_better else max(block, key=lambda r: r.mean)
    for r in block:
      if len(block) < 2:
        continue
      if r is best:
        r.mark = "★"
      elif welch_p(r.values, best.values) >= 0.05:
        r.mark = "≈"
  return out


def _blocks(rs: list[Row]) -> dict[tuple[str, str], list[Row]]:
  blocks: dict[tuple[str, str], list[Row]] = {}
  for r in rs:
    blocks.setdefault((r.group, r.task), []).append(r)
  return blocks


_DIVERGED_NOTE = (" Seeds that diverged (non-finite training loss) are counted in the seeds column "
                  "and left out of mean, CI and marks.")


def _fmt(x: float, scale: float) -> str:
  return "–" if math.isnan(x) else f"{x * scale:.1f}"


def markdown(rs: list[Row], meta: dict[str, Any], metric: str = "accuracy", split: str = "test") -> str:
  pct = 100.0 if "accuracy" in metric else 1.0
  unit = " (%)" if pct == 100.0 else ""
  lines = [f"# Sweep `{meta.get('name', '?')}`: {split} {metric}{unit}", "",
           f"Mean ± 95% CI (Student t over seeds). ★ best in its block; ≈ not significantly different "
           f"from the best (Welch t-test, p ≥ 0.05)." + (_DIVERGED_NOTE if any(r.diverged for r in rs) else ""),
           ""]
  for group in dict.fromkeys(r.group for r in rs):
    lines += [f"## {group}", "", f"| task | variant | {split} {metric}{unit} | val {metric}{unit} | seeds |",
              "|---|---|---|---|---|"]
    for r in (r for r in rs if r.group == group):
      cell = f"{_fmt(r.mean, pct)} ± {_fmt(r.ci, pct)}" if r.values else "diverged"
      if r.mark == "★":
        cell = f"**{cell}** ★"
      elif r.mark:
        cell = f"{cell} {r.mark}"
      seeds = f"{len(r.values)} (+{r.diverged} diverged)" if r.diverged else f"{len(r.values)}"
      lines.append(f"| {r.task} | {r.variant} | {cell} | {_fmt(r.val_mean, pct)} | {seeds} |")
    lines.append("")
  return "\n".join(lines)


def write(workdir: str, *, metric: str = "accuracy", split: str = "test", plots: bool = True) -> str:
  """Writes DIR/report.md (and plots unless ``plots=False``); returns the Markdown."""
  workdir = pathlib.Path(workdir)
  meta, records = load(workdir)
  if not records:
    raise NoResults(f"{str(workdir / 'results.jsonl')!r} has no valid results lines; nothing to "
                    "report (report.md left as it is)")
  check_choice(records, metric, split)
  rs = rows(records, metric, split)
  text = markdown(rs, meta, metric, split)
  if plots:
    from attnlab import plots as plots_lib  # pylint: disable=g-import-not-at-top
    written = plots_lib.write_all(workdir, rs, metric, split)
    if written:
      text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in written) + "\n"
  results.atomic_write_text(workdir / "report.md", text)
  return text


def learning_curves(run_dir: pathlib.Path, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(steps, mean over seeds of the val metric) from a run's metrics.jsonl."""
  path = run_dir / "metrics.jsonl"
  if not path.exists():
    return None
  pts = []
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
      if r.get("split") == "val" and metric in r:
        pts.append((int(r["step"]), float(np.mean(r[metric]))))
    except (ValueError, TypeError, KeyError, AttributeError):  # a torn line of a killed run
      continue
  if not pts:
    return None
  steps, values = zip(*pts)
  return np.asarray(steps), np.asarray(values)
