"""The rows of ``attnlab report``: per variant (a sweep's run point), statistics over its seeds.

A variant trained with a learning-rate grid (results lines with ``per_rate``, attnlab.tuning) is
shown at the rate chosen on VALIDATION from all its seeds' lines: fewest diverged seeds, then the
best mean val value of the metric compared (``tuning.choose``); every column then reads that rate.
Per variant: the compared metric's mean ± 95% Student-t CI over the seeds that did not diverge, the
val mean, the learning speed (steps to the val threshold over the seeds that reached it, with how
many did; the val-curve area), how many seeds early stopping stopped before the step budget (a
plateau on val) and the attention sparsity.

Within a block (category × task) the best mean is ★. Every other variant is compared with it by a
paired t-test on per-seed differences (seed i sees the same data, in the same order, for every
variant of a task: the tasks' data is a function of (seed, step)); with fewer than 2 shared seeds,
Welch's test. The block's p-values are Holm-corrected (attnlab.stats.holm); adjusted p >= 0.05 is
marked ≈: not significantly different from the best on this evidence.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from attnlab import results, stats, tuning
from attnlab.sweep import label


@dataclasses.dataclass
class Row:
  group: str
  task: str
  variant: str
  run_id: str
  values: list[float]  # the compared metric per seed that did not diverge, at the chosen rate
  mean: float
  ci: float
  val_mean: float
  diverged: int = 0
  mark: str = ""
  seeds: list[int] = dataclasses.field(default_factory=list)  # the seeds of ``values``
  p: float = math.nan  # Holm-adjusted p-value against the block's best (NaN: none)
  lr: float | None = None  # the chosen (or only) learning rate; None: not recorded
  num_rates: int = 1  # rates in the variant's grid (1: no grid)
  rate_index: int = 0
  reach: tuple[str, float | None] | None = None  # (val metric, threshold or None); None: not recorded
  reach_steps: list[int] = dataclasses.field(default_factory=list)  # of the seeds that reached it
  reach_of: int = 0  # seeds (not diverged) measured
  auc: list[float] = dataclasses.field(default_factory=list)
  stopped: int | None = None  # seeds (not diverged) that early stopping stopped before the budget
  sparsity: list[float] = dataclasses.field(default_factory=list)
  point: dict[str, Any] = dataclasses.field(default_factory=dict)  # the run point (sweep.Run.point)

  @property
  def lr_edge(self) -> bool:
    return tuning.at_edge(self.rate_index, self.num_rates)


def _ok(view: dict[str, Any]) -> bool:
  return view.get("status", results.STATUS_OK) == results.STATUS_OK


def _view(record: dict[str, Any], rate: int | None) -> dict[str, Any]:
  """The record's fields at rate index ``rate`` of its grid (None: the line's own fields)."""
  return record if rate is None else {**record["per_rate"][rate], "reach": record.get("reach")}


def _metric(view: dict[str, Any], split: str, metric: str) -> float | None:
  return view["metrics"].get(split, {}).get(metric)


def _chosen_rate(recs: list[dict[str, Any]], metric: str) -> tuple[int | None, int, float | None]:
  """(rate index or None, grid size, rate) for a variant's lines (module docstring)."""
  grids = {tuple(p["learning_rate"] for p in r["per_rate"]) for r in recs if "per_rate" in r}
  if len(grids) != 1 or not all("per_rate" in r for r in recs):
    return None, 1, recs[0].get("learning_rate")
  lrs = grids.pop()
  val = [[_metric(_view(r, i), "val", metric) if _ok(_view(r, i)) else None for r in recs]
         for i in range(len(lrs))]
  index = tuning.choose(val, metric)
  return index, len(lrs), lrs[index]


def variant_row(recs: list[dict[str, Any]], metric: str, split: str) -> Row | None:
  """The row of one variant's lines (one per seed), or None if none has the metric."""
  index, num_rates, lr = _chosen_rate(recs, metric)
  views = [(r, _view(r, index)) for r in recs]
  ok = [(r, v) for r, v in views if _ok(v)]
  kept = [(r["seed"], _metric(v, split, metric)) for r, v in ok if _metric(v, split, metric) is not None]
  diverged = len(views) - len(ok)
  if not kept and not diverged:
    return None
  values = [x for _, x in kept]
  mean, ci, _ = stats.mean_ci(values)
  val = [x for _, v in ok if (x := _metric(v, "val", metric)) is not None]
  point = recs[0]["run"]
  row = Row(point["group"], point["task"], label(point), recs[0].get("run_id", ""), values, mean, ci,
            float(np.mean(val)) if val else math.nan, diverged, seeds=[s for s, _ in kept], lr=lr,
            num_rates=num_rates, rate_index=index or 0, point=point)
  reach = next((r["reach"] for r in recs if (r.get("reach") or {}).get("value") is not None),
               recs[0].get("reach"))
  if reach:
    row.reach = (reach["metric"], reach["value"])
    measured = [v for _, v in ok if (v.get("reach") or {}).get("value") is not None]
    row.reach_of = len(measured)
    row.reach_steps = [v["reach_step"] for v in measured if v.get("reach_step") is not None]
  row.auc = [v["auc"] for _, v in ok if v.get("auc") is not None]
  if ok and all(r.get("early_stopping") and "steps" in r and "stopped_at" in v for r, v in ok):
    row.stopped = sum(v["stopped_at"] < r["steps"] for r, v in ok)
  row.sparsity = [r["attention_sparsity"] for r, _ in ok if r.get("attention_sparsity") is not None
                  and r.get("learning_rate") == lr]  # recorded at the run's own chosen rate
  return row


def rows(records: list[dict[str, Any]], metric: str = "accuracy", split: str = "test") -> list[Row]:
  """One row per run point, in first-seen order, with the marks of the module docstring."""
  by_run: dict[str, list[dict[str, Any]]] = {}
  for r in records:
    by_run.setdefault(results.canonical(r["run"]), []).append(r)
  out = [row for recs in by_run.values() if (row := variant_row(recs, metric, split)) is not None]
  for block in blocks(out).values():
    mark(block, results.minimised(metric))
    _shorten_labels(block)
  return out


def _shorten_labels(block: list[Row]) -> None:
  """Drops from the variant labels of a block of >= 2 rows the keys every row shares (e.g. a step
  budget fixed for the block's task): the label names what differs."""
  if len(block) < 2:
    return
  first = block[0].point
  same = {k for k in first if all(k in r.point and r.point[k] == first[k] for r in block)}
  for r in block:
    r.variant = label({k: v for k, v in r.point.items() if k not in same or k in ("group", "task")})


def blocks(rs: list[Row]) -> dict[tuple[str, str], list[Row]]:
  out: dict[tuple[str, str], list[Row]] = {}
  for r in rs:
    out.setdefault((r.group, r.task), []).append(r)
  return out


def compare_p(row: Row, best: Row) -> float:
  """Paired t-test p-value on the seeds both have (>= 2), else Welch's; NaN if neither applies."""
  mine, theirs = dict(zip(row.seeds, row.values)), dict(zip(best.seeds, best.values))
  shared = sorted(set(mine) & set(theirs))
  if len(shared) >= 2:
    return stats.paired_p([mine[s] for s in shared], [theirs[s] for s in shared])
  return stats.welch_p(row.values, best.values)


def mark(block: list[Row], lower_better: bool) -> None:
  """★ on the block's best mean; Holm-adjusted ``p`` and ≈ (p >= 0.05) on the others."""
  ranked = [r for r in block if r.values]
  if len(ranked) < 2:
    return
  best = (min if lower_better else max)(ranked, key=lambda r: r.mean)
  best.mark = "★"
  others = [r for r in ranked if r is not best]
  for r, p in zip(others, stats.holm([compare_p(r, best) for r in others])):
    r.p = p
    if p >= 0.05:
      r.mark = "≈"
