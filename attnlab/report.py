"""``attnlab report DIR``: the comparison table of a sweep, and its plots.

Rows are grouped by the category compared (the sub-grid's ``group``) and task; each row is a variant
(attnlab.compare computes the rows: the rate chosen on val, mean ± half-width of the 95% Student-t
CI over seeds, t_{0.975, n-1} · s / √n with s of ddof=1, paired tests against the block's best,
Holm-corrected). Columns: the compared metric with ★ (best in its block) or ≈ (not significantly
different from the best after Holm), the Holm-adjusted p-value against the best, the val mean, the
learning rate (⚠: at the edge of its grid, widen the grid), steps to the val threshold (mean ± CI
over the seeds that reached it, "reached/seeds"), the val-curve area (attnlab.tuning), the seeds
stopped early on a val plateau (of the seeds) and, when recorded, the % of exact zeros in the
attention weights (attnlab.sparsity). A field that results lines of older runs lack shows "-". Seeds
that diverged (a non-finite training loss) are counted in the seeds column and left out of
everything else; a variant whose seeds all diverged shows "diverged". Written to ``DIR/report.md``;
an unknown metric or split, or no results, is an error that leaves an existing report as it is.

Plots (matplotlib, the ``plots`` extra, imported only here) go to ``DIR/plots/``: the metric per
variant per task (``<group>.png``), val learning curves from each run's metrics.jsonl at its chosen
rate (``curves_<group>.png``), and attention maps of one val example per variant
(``attention_<group>_<task>.png``).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np

from attnlab import results
from attnlab.compare import Row, rows  # noqa: F401  (report.rows, report.Row: the table's rows)
from attnlab.results import learning_curves  # noqa: F401  (report.learning_curves: its old home)


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


def check_choice(records: list[dict[str, Any]], metric: str, split: str) -> None:
  """ValueError naming the valid splits or metrics if ``split`` or ``metric`` is not in ``records``."""
  splits = sorted({s for r in records for s in r["metrics"]})
  if split not in splits:
    raise ValueError(f"report: unknown split {split!r}; the results have: {', '.join(splits)}")
  metrics = sorted({m for r in records for m in r["metrics"].get(split, {})})
  if metric not in metrics:
    raise ValueError(f"report: unknown metric {metric!r} for split {split!r}; the results have: "
                     f"{', '.join(metrics)}")


_DIVERGED_NOTE = (" Seeds that diverged (non-finite training loss) are counted in the seeds column "
                  "and left out of mean, CI and marks.")


_ZEROS_NOTE = (" zeros: % exact zeros in the attention weights on val data, masked positions included "
               "(the softmax row shows the masks' share).")


def _fmt(x: float, scale: float) -> str:
  return "–" if math.isnan(x) else f"{x * scale:.1f}"


def _ci_cell(values: list[float], scale: float, digits: int = 1) -> str:
  if not values:
    return "-"
  mean, ci, _ = results.mean_ci(values)
  return f"{mean * scale:.{digits}f} ± " + ("–" if math.isnan(ci) else f"{ci * scale:.{digits}f}")


def _p_cell(p: float) -> str:
  return "" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _lr_cell(r: Row) -> str:
  return "-" if r.lr is None else f"{r.lr:g}" + (" ⚠" if r.lr_edge else "")


def _steps_cell(r: Row) -> str:
  if r.reach is None or r.reach[1] is None:
    return "-"
  return f"{_ci_cell(r.reach_steps, 1.0, 0) if r.reach_steps else '–'} ({len(r.reach_steps)}/{r.reach_of})"


def _cells(r: Row, pct: float, speed_pct: float, zeros: bool) -> list[str]:
  cell = f"{_fmt(r.mean, pct)} ± {_fmt(r.ci, pct)}" if r.values else "diverged"
  if r.mark == "★":
    cell = f"**{cell}** ★"
  elif r.mark:
    cell = f"{cell} {r.mark}"
  seeds = f"{len(r.values)} (+{r.diverged} diverged)" if r.diverged else f"{len(r.values)}"
  out = [r.task, r.variant, cell, _p_cell(r.p), _fmt(r.val_mean, pct), _lr_cell(r), _steps_cell(r),
         _ci_cell(r.auc, speed_pct), "-" if r.stopped is None else f"{r.stopped}/{len(r.values)}"]
  if zeros:
    out.append(f"{100 * np.mean(r.sparsity):.1f}" if r.sparsity else "-")
  return out + [seeds]


def _speed_header(rs: list[Row]) -> tuple[str, str, float]:
  """(steps column, AUC column, scale of the AUC) of a group."""
  metrics = {r.reach[0] for r in rs if r.reach is not None}
  metric = metrics.pop() if len(metrics) == 1 else "metric"
  scale, unit = (100.0, " (%)") if "accuracy" in metric else (1.0, "")
  op = "≤" if results.minimised(metric) else "≥"
  values = {r.reach[1] for r in rs if r.reach is not None and r.reach[1] is not None}
  steps = (f"steps to val {metric} {op} {values.pop():g}" if len(values) == 1 and metric != "metric"
           else "steps to val threshold")
  return steps, f"val {metric} AUC{unit}", scale


def markdown(rs: list[Row], meta: dict[str, Any], metric: str = "accuracy", split: str = "test") -> str:
  pct = 100.0 if "accuracy" in metric else 1.0
  unit = " (%)" if pct == 100.0 else ""
  lines = [f"# Sweep `{meta.get('name', '?')}`: {split} {metric}{unit}", "",
           f"Mean ± 95% CI (Student t over seeds), at each variant's learning rate chosen on val {metric} "
           f"(⚠: at the edge of its grid). ★ best in its block; ≈ not significantly different from "
           f"the best: paired t-test over seeds (Welch's when < 2 seeds are shared), Holm-corrected "
           f"within the block, p ≥ 0.05 (the p column). Steps: the first evaluation at which the val "
           f"metric reached the threshold, over the seeds that reached it (reached/seeds); AUC: the "
           f"mean val metric over the evaluations of the step budget, stopped seeds holding their "
           f"last value. Plateau: seeds that early stopping stopped before the step budget (val "
           f"no longer improving), of the seeds; the others were still improving when the budget "
           f"ended." + (_ZEROS_NOTE if any(r.sparsity for r in rs) else "") + " - = not recorded."
           + (_DIVERGED_NOTE if any(r.diverged for r in rs) else ""), ""]
  for group in dict.fromkeys(r.group for r in rs):
    grs = [r for r in rs if r.group == group]
    steps, auc, speed_pct = _speed_header(grs)
    zeros = any(r.sparsity for r in grs)
    header = ["task", "variant", f"{split} {metric}{unit}", "p (Holm)", f"val {metric}{unit}", "lr", steps,
              auc, "plateau"] + (["zeros (%)"] if zeros else []) + ["seeds"]
    lines += [f"## {group}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(r, pct, speed_pct, zeros)) + " |" for r in grs]
    edge = [f"{r.variant} ({r.task})" for r in grs if r.lr_edge]
    if edge:
      lines += ["", f"⚠ learning rate at the edge of its grid, widen the grid: {', '.join(edge)}"]
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
  order = {results.canonical(p): i for i, p in enumerate(meta.get("runs", []))}  # the sweep's order
  records = sorted(records, key=lambda r: order.get(results.canonical(r["run"]), len(order)))
  rs = rows(records, metric, split)
  text = markdown(rs, meta, metric, split)
  if plots:
    from attnlab import plots as plots_lib  # pylint: disable=g-import-not-at-top
    written = plots_lib.write_all(workdir, rs, metric, split)
    if written:
      text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in written) + "\n"
  results.atomic_write_text(workdir / "report.md", text)
  return text
