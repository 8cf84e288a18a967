"""Per-variant tuning and learning-speed results of a run: its rate grid, the chosen rate, the curves.

A run trains ``optim.learning_rates`` (R rates; () = ``optim.learning_rate`` alone) × its S seeds as
R·S members of one vmapped program (attnlab.steps), member r·S + s = (rate r, seed s). Each member
has its own early stopping. The run's rate is chosen on VALIDATION: the rate whose seeds have the
fewest divergences, then the best mean over seeds of the kept val ``optim.select_metric`` (the
best-val state's with early stopping, else the last); ties go to the earlier rate. Test metrics are
then reported at that rate. A chosen rate at either end of a grid of >= 2 rates is ``at_edge``
(the grid may not hold the best rate: widen it).

Learning speed, per member, on the val ``train.reach_metric``:

* ``reach_step``: the step of the first evaluation at which it is >= ``train.reach_value`` (<= for
  losses); None when not reached (or not measured: ``reach.value`` None), never a number;
* ``auc``: the mean of the metric over the E = ceil(steps / eval_every) evaluations of the budget,
  a member that stopped early (or whose run ended) holding its last evaluated value — the
  normalised area under its val learning curve (1 = perfect from the first evaluation on).

Members that diverged have None for every metric. ``result`` assembles result.json; ``line_fields``
the extra fields of a seed's results line (attnlab.results lists them).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import ml_collections
import numpy as np

from attnlab import results
from attnlab.results import minimised


def rates(optim: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The run's learning rates: ``optim.learning_rates``, or ``(optim.learning_rate,)``."""
  return tuple(float(r) for r in optim.learning_rates) or (float(optim.learning_rate),)


def member_name(i: int, lrs: Sequence[float], seeds: Sequence[int]) -> str:
  r, s = divmod(i, len(seeds))
  return f"seed {seeds[s]}" + (f" at learning rate {lrs[r]:g}" if len(lrs) > 1 else "")


def progress(val: dict[str, Any], lrs: Sequence[float]) -> str:
  """The log's val means: over the seeds, per rate of a grid."""
  means = {m: np.asarray(v, np.float64).reshape(len(lrs), -1).mean(1) for m, v in val.items()}
  per_rate = [", ".join(f"val {m} {v[r]:.4f}" for m, v in means.items()) for r in range(len(lrs))]
  return per_rate[0] if len(lrs) == 1 else "; ".join(f"lr {lr:g}: {t}" for lr, t in zip(lrs, per_rate))


def choose(val: Sequence[Sequence[float | None]], metric: str) -> int:
  """Index of the chosen rate given val[r][s] (None: seed s diverged at rate r); module docstring."""
  sign = 1.0 if minimised(metric) else -1.0

  def key(r: int) -> tuple[int, float, int]:
    kept = [v for v in val[r] if v is not None and math.isfinite(v)]
    return len(val[r]) - len(kept), sign * float(np.mean(kept)) if kept else math.inf, r
  return min(range(len(val)), key=key)


def at_edge(index: int, count: int) -> bool:
  return count >= 2 and index in (0, count - 1)


def auc(curve_sum: float, curve_n: int, last: float, evaluations: int) -> float | None:
  """The normalised area under a member's val curve (module docstring); None before any evaluation."""
  if curve_n <= 0 or not math.isfinite(last):
    return None
  return float((curve_sum + (evaluations - curve_n) * last) / evaluations)


def result(config: ml_collections.ConfigDict, val: dict[str, Any], test: dict[str, Any],
           es: dict[str, Any], evaluations: int) -> tuple[dict[str, Any], int]:
  """(result.json's fields of the tuning and speed, chosen rate index) from per-member arrays [R·S]."""
  lrs, seeds = rates(config.optim), list(config.train.seeds)
  num = len(seeds)
  diverged_at = np.asarray(es["diverged_at"]).tolist()
  reach_value = config.train.reach_value

  def at_rate(r: int) -> dict[str, Any]:
    part = slice(r * num, (r + 1) * num)
    ok = [d < 0 for d in diverged_at[part]]
    steps = [int(x) if x >= 0 else None for x in np.asarray(es["reach_step"])[part]]
    curve = zip(np.asarray(es["curve_sum"])[part], np.asarray(es["curve_n"])[part],
                np.asarray(es["curve_last"])[part])
    return {
        "learning_rate": lrs[r],
        "metrics": {"val": results.summarize({m: np.asarray(v)[part] for m, v in val.items()}, ok),
                    "test": results.summarize({m: np.asarray(v)[part] for m, v in test.items()}, ok)},
        "status": [results.STATUS_OK if d < 0 else results.diverged_status(d) for d in diverged_at[part]],
        "best_step": np.asarray(es["best_step"])[part].tolist(),
        "stopped_at": np.asarray(es["stopped_at"])[part].tolist(),
        "reach_step": [s if k and reach_value is not None else None for s, k in zip(steps, ok)],
        "auc": [auc(float(a), int(n), float(l), evaluations) if k else None
                for (a, n, l), k in zip(curve, ok)],
    }

  per_rate = [at_rate(r) for r in range(len(lrs))]
  select = config.optim.select_metric
  chosen = (choose([p["metrics"]["val"][select]["per_seed"] for p in per_rate], select)
            if config.optim.learning_rates else 0)
  out = {**per_rate[chosen], "reach": {"metric": config.train.reach_metric, "value": reach_value},
         "steps": int(config.train.steps)}
  if config.optim.learning_rates:
    out["tuning"] = {"learning_rates": list(lrs), "select_metric": select, "chosen": chosen,
                     "at_edge": at_edge(chosen, len(lrs)), "per_rate": per_rate}
  return out, chosen


def line_fields(result_json: dict[str, Any], i: int) -> dict[str, Any]:
  """The tuning/speed fields of seed ``i``'s results line (absent from results of older runs)."""
  out: dict[str, Any] = {}
  for key in ("learning_rate", "reach", "steps", "early_stopping"):
    if key in result_json:
      out[key] = result_json[key]
  for key in ("reach_step", "auc", "attention_sparsity"):
    if key in result_json:
      out[key] = result_json[key][i]
  tuning = result_json.get("tuning")
  if tuning:
    out["select_metric"] = tuning["select_metric"]
    out["per_rate"] = [{"learning_rate": p["learning_rate"], "status": p["status"][i],
                        "metrics": {split: {m: v["per_seed"][i] for m, v in per.items()}
                                    for split, per in p["metrics"].items()},
                        **{k: p[k][i] for k in ("best_step", "stopped_at", "reach_step", "auc")}}
                       for p in tuning["per_rate"]]
  return out


def summary_lines(result_json: dict[str, Any]) -> list[str]:
  """``attnlab train``'s lines on the chosen rate and the learning speed (after the metrics)."""
  lines = []
  tuning = result_json.get("tuning")
  if tuning:
    grid = ", ".join(f"{r:g}" for r in tuning["learning_rates"])
    lines.append(f"learning rate {result_json['learning_rate']:g} chosen on val "
                 f"{tuning['select_metric']} from ({grid})"
                 + (": at the edge of the grid, widen it" if tuning["at_edge"] else ""))
  reach = result_json.get("reach") or {}
  if reach.get("value") is not None:
    ok = [s for s, st in zip(result_json["reach_step"], result_json["status"]) if st == results.STATUS_OK]
    hit = [s for s in ok if s is not None]
    lines.append(f"steps to val {reach['metric']} {'<=' if minimised(reach['metric']) else '>='} "
                 f"{reach['value']:g}: {len(hit)}/{len(ok)} reached"
                 + (f", mean {np.mean(hit):.0f}" if hit else ""))
  aucs = [a for a in result_json.get("auc", ()) if a is not None]
  if aucs:
    lines.append(f"val {reach.get('metric', '?')} curve area (mean over evaluations): {np.mean(aucs):.4f}")
  return lines
