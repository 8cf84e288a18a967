"""Sweeps: where a sweep config is expanded into runs, and where they are run resumably.

A sweep config (``configs/sweeps/*.py``, ``get_config(arg=None)``) is a ConfigDict with

    name       the sweep's name
    seeds      tuple of seeds; every run trains them together (vmapped)
    overrides  nested like a run config, applied to every run (e.g. {"train": {"steps": 200}}),
               so ``--config.overrides.train.steps=50`` works from the command line; the tuned
               protocol (attnlab.tuning) for every run: {"optim": {"learning_rates": (1e-3, 3e-3,
               1e-2)}, "train": {"reach_value": 0.95, "early_stopping": {"patience": 5}}}
    grids      a list of sub-grids; the sweep is their UNION (not a cross product):
               {"group": category compared, "config": "assoc_recall" (configs/assoc_recall.py) or a
                path[:arg], "fixed": {dotted key: value}, "axes": {dotted key: [values]}}
               each sub-grid is the product of its axes.

A run's point, ``{"group", "task", **fixed, **axis values}``, identifies it in ``results.jsonl``
(canonical JSON, stable across restarts). ``DIR/sweep.json`` stores the expanded sweep and its
fingerprint (sha256 of every run's full config and the seeds); a DIR holding another sweep is
refused. Each finished (run, seed) appends one line to ``DIR/results.jsonl`` (attnlab.results;
with a rate grid the line holds every rate's metrics of that seed, ``per_rate``);
a rerun skips done pairs. ``shard=(i, n)`` runs the runs with index ≡ i (mod n). A run is trained
and recorded while its directory is held (attnlab.runlock): a second process on the same sweep or
shard skips the runs the first one holds (counted as busy) and re-reads results.jsonl before each
run, so no (run, seed) is recorded twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import pathlib
import re
from typing import Any

import ml_collections
from absl import logging

from attnlab import config as config_lib
from attnlab import registry, results, runlock, tuning

DEFAULT = config_lib.REPO_ROOT / "configs" / "sweeps" / "categories.py"


@dataclasses.dataclass
class Run:
  index: int
  point: dict[str, Any]
  config: ml_collections.ConfigDict

  @property
  def id(self) -> str:
    digest = hashlib.sha256(results.canonical(self.point).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.point['group']}-{self.point['task']}")
    return f"{self.index:03d}-{slug}-{digest}"


def _config_name(name: str) -> str:
  """"assoc_recall" -> "assoc_recall"; "configs/x.py:arg" -> "x:arg" (the task column of reports)."""
  path, _, arg = name.partition(":")
  stem = pathlib.Path(path).stem if path.endswith(".py") else path
  return f"{stem}:{arg}" if arg else stem


def _base_path(name: str) -> str:
  return name if name.endswith(".py") or ".py:" in name else f"configs/{name}.py"


def check_names(config: ml_collections.ConfigDict, where: str) -> None:
  """Unknown task or model names -> ValueError naming them (before anything runs; the attention
  spec, model.attention, is checked by config.validate)."""
  for kind, name in (("task", config.task.name), ("model", config.model.name)):
    if name not in registry.names(kind):
      raise ValueError(f"{where}: unknown {kind} {name!r}; registered {kind}s: "
                       f"{', '.join(registry.names(kind))}")


def expand(sweep: ml_collections.ConfigDict) -> list[Run]:
  """The runs of ``sweep`` in a fixed order (sub-grids in order, axes in row-major order)."""
  for key in ("name", "seeds", "grids"):
    if key not in sweep:
      raise ValueError(f"sweep config: missing {key!r} (fields: name, seeds, overrides, grids)")
  grids = [dict(g) for g in sweep.grids]
  overrides = _flatten(sweep.get("overrides", None))
  runs, seen = [], set()
  for g, grid in enumerate(grids):
    unknown = set(grid) - {"group", "config", "fixed", "axes"}
    if unknown or "group" not in grid or "config" not in grid:
      raise ValueError(f"sweep {sweep.name!r} grid {g}: needs 'group' and 'config' (optional 'fixed', "
                       f"'axes'); unknown keys: {sorted(unknown)}")
    fixed, axes = dict(grid.get("fixed", {})), dict(grid.get("axes", {}))
    for values in itertools.product(*axes.values()):
      point = {"group": grid["group"], "task": _config_name(grid["config"]), **fixed,
               **dict(zip(axes, values))}
      if results.canonical(point) in seen:
        raise ValueError(f"sweep {sweep.name!r}: run {point} appears twice")
      seen.add(results.canonical(point))
      cfg = config_lib.load_file(_base_path(grid["config"]))
      for key, value in {**overrides, **fixed, **dict(zip(axes, values))}.items():
        config_lib.set_dotted(cfg, key, value)
      cfg.train.seeds = tuple(sweep.seeds)
      where = f"sweep {sweep.name!r} run {point}"
      try:
        config_lib.validate(cfg)
      except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from None
      check_names(cfg, where)
      runs.append(Run(len(runs), point, cfg))
  if not runs:
    raise ValueError(f"sweep {sweep.name!r} has no runs")
  return runs


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if tree is None:
    return {}
  if isinstance(tree, (dict, ml_collections.ConfigDict)):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, (dict, ml_collections.ConfigDict))
                 else {f"{prefix}{k}": v})
    return out
  raise TypeError(f"sweep config: overrides must be a nested dict, got {type(tree).__name__}")


def fingerprint(sweep: ml_collections.ConfigDict, runs: list[Run], *, legacy: bool = False) -> str:
  """sha256 of the seeds and every run's point and config; ``legacy``: spelled with the section
  names before ``results.RENAMED_KEYS`` (task.knobs, model.options), as a DIR written then holds.
  Sections of ``config.ADDED_SECTIONS`` left at their defaults are left out (as before they existed)."""
  old = {"task": "knobs", "model": "options"}
  spell = lambda d, p: {(old[p] if legacy and p in old and k == "kwargs" else k): v for k, v in d.items()}
  body = {"seeds": list(sweep.seeds), "runs": [
      [{(results.legacy_key(k) if legacy else k): v for k, v in r.point.items()},
       {p: spell(v, p) if isinstance(v, dict) else v
        for p, v in config_lib.without_default_added_sections(config_lib.to_dict(r.config)).items()}]
      for r in runs]}
  return hashlib.sha256(results.canonical(body).encode()).hexdigest()


def check_workdir(workdir: pathlib.Path, sweep: ml_collections.ConfigDict, runs: list[Run]) -> None:
  """Writes DIR/sweep.json, or refuses a DIR that holds results of a different sweep."""
  meta_path, res_path = workdir / "sweep.json", workdir / "results.jsonl"
  fp = fingerprint(sweep, runs)
  if meta_path.exists():
    try:
      old = results.read_json(meta_path)
    except ValueError as e:
      raise ValueError(f"workdir {str(workdir)!r}: sweep.json is unreadable ({e}); use a new "
                       "--workdir") from e
    if old.get("fingerprint") not in (fp, fingerprint(sweep, runs, legacy=True)):
      old_points = {results.canonical(p) for p in old.get("runs", [])}
      new_points = {results.canonical(r.point) for r in runs}
      raise ValueError(
          f"workdir {str(workdir)!r} holds results of a different sweep config (sweep "
          f"{old.get('name')!r}, {len(old_points)} runs, fingerprint {old.get('fingerprint', '')[:12]}); "
          f"this config is {sweep.name!r} ({len(new_points)} runs, fingerprint {fp[:12]}; "
          f"{len(new_points - old_points)} run points new, {len(old_points - new_points)} gone, the "
          f"others may differ in their configs or seeds). Nothing was changed: use a new --workdir.")
    return
  if res_path.exists():
    raise ValueError(f"workdir {str(workdir)!r} has results.jsonl but no sweep.json: not a sweep "
                     f"directory of this config; nothing was changed, use a new --workdir")
  results.make_dir(workdir)
  from attnlab.train import is_primary  # pylint: disable=g-import-not-at-top
  if is_primary():
    results.atomic_write_json(meta_path, {"name": sweep.name, "fingerprint": fp, "seeds": list(sweep.seeds),
                                          "runs": [r.point for r in runs],
                                          "run_ids": [r.id for r in runs]})


def parse_shard(text: str | None) -> tuple[int, int]:
  """"i/n" -> (i, n) with 0 <= i < n."""
  if not text:
    return 0, 1
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
  if not 0 <= i < n:
    raise ValueError(f"--shard {text!r}: need 0 <= i < n")
  return i, n


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str, *, shard: tuple[int, int] = (0, 1),
              progress: bool = True, worker: bool = False) -> dict[str, int]:
  """Runs this shard's unfinished (run, seed) pairs; returns counts (runs, trained, skipped, busy).
  Runs that reuse a twin's lines come after the others (their twin is then usually recorded). A
  ``worker`` (attnlab.workers) logs the runs it skips as busy at info level: they are its peers'."""
  from attnlab import train  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  runs = expand(sweep)
  check_workdir(workdir, sweep, runs)
  res_path = workdir / "results.jsonl"
  mine = [r for r in runs if r.index % shard[1] == shard[0]]
  twins = _twins(runs)
  done = _done(res_path)
  todo = sorted((r for r in mine if _missing(r, sweep, done)), key=lambda r: r.index in twins)
  counts = {"runs": len(mine), "trained": 0, "skipped": len(mine) - len(todo), "busy": 0}
  bar = progress_bar(progress and train.is_primary())
  with bar:
    task_id = bar.add_task(f"sweep {sweep.name}", total=len(mine), completed=counts["skipped"])
    for run in todo:
      bar.update(task_id, description=f"{run.point['group']} · {run.point['task']} · "
                 f"{label(run.point)}")
      run_dir = results.make_dir(workdir / "runs" / run.id)
      twin = twins.get(run.index)
      try:
        with runlock.hold(run_dir) if train.is_primary() else contextlib.nullcontext():
          if _copy_twin(run, twin, sweep, res_path):
            counts["skipped"] += 1
            continue
          # A twin another process is training is waited for by a later pass (RunBusy), not repeated.
          with (runlock.hold(results.make_dir(workdir / "runs" / twin.id))
                if twin is not None and train.is_primary() else contextlib.nullcontext()):
            if _copy_twin(run, twin, sweep, res_path):
              counts["skipped"] += 1
            else:
              counts["trained" if _train_run(run, sweep, run_dir, res_path) else "skipped"] += 1
      except runlock.RunBusy as e:
        (logging.info if worker else logging.warning)("sweep %s: skipping run %s: %s", sweep.name, run.id, e)
        counts["busy"] += 1
      finally:
        bar.advance(task_id)
  logging.info("sweep %s shard %d/%d: %s", sweep.name, shard[0], shard[1], counts)
  return counts


def _twins(runs: list[Run]) -> dict[int, Run]:
  """Run index -> the first earlier run with the identical config (e.g. a task's default model,
  which several blocks compare against): its lines are reused instead of training it again."""
  first: dict[str, Run] = {}
  twins = {}
  for run in runs:
    body = results.canonical(config_lib.to_dict(run.config))
    if body in first:
      twins[run.index] = first[body]
    else:
      first[body] = run
  return twins


def _copy_twin(run: Run, twin: Run | None, sweep: ml_collections.ConfigDict,
               res_path: pathlib.Path) -> bool:
  """Appends ``run``'s missing lines as copies of its twin's (same config, same seeds, so the same
  numbers; ``run_id`` stays the twin's, whose run directory holds the curves); False if the twin
  has not recorded all of them (then ``run`` trains itself)."""
  if twin is None:
    return False
  recorded = results.read_lines(res_path)
  missing = _missing(run, sweep, {results.key(r) for r in recorded})
  lines = {r["seed"]: r for r in recorded if results.canonical(r["run"]) == results.canonical(twin.point)}
  if not missing or not all(s in lines for s in missing):
    return False
  for seed in missing:
    results.append_line(res_path, {**lines[seed], "run": run.point})
  return True


def _done(res_path: pathlib.Path) -> set[tuple[str, int]]:
  """The (run, seed) pairs recorded in results.jsonl."""
  return {results.key(r) for r in results.read_lines(res_path)}


def _missing(run: Run, sweep: ml_collections.ConfigDict, done: set[tuple[str, int]]) -> list[int]:
  return [s for s in sweep.seeds if (results.canonical(run.point), s) not in done]


def _train_run(run: Run, sweep: ml_collections.ConfigDict, run_dir: pathlib.Path,
               res_path: pathlib.Path) -> bool:
  """Trains ``run``'s missing seeds and appends their lines; False if none was missing."""
  from attnlab import train  # pylint: disable=g-import-not-at-top
  missing = _missing(run, sweep, _done(res_path))  # read again: another process may have appended
  if not missing:
    return False
  cfg = run.config
  if missing != list(sweep.seeds):  # some seeds are already recorded: train only the others
    cfg = cfg.copy_and_resolve_references()
    cfg.train.seeds = tuple(missing)
    run_dir = run_dir / ("seeds-" + "-".join(map(str, missing)))
  result = train.train_and_evaluate(cfg, str(run_dir))
  if not train.is_primary():
    return True
  statuses = result.get("status", [results.STATUS_OK] * len(result["seeds"]))
  for i, seed in enumerate(result["seeds"]):
    if seed not in missing:
      continue
    results.append_line(res_path, {
        "sweep": sweep.name, "run": run.point, "seed": seed, "run_id": run.id,
        "task": cfg.task.name, "model": cfg.model.name, "status": statuses[i],
        "metrics": {split: {m: v["per_seed"][i] for m, v in per.items()}
                    for split, per in result["metrics"].items()},
        "best_step": result["best_step"][i], "stopped_at": result["stopped_at"][i],
        "run_wall_s": result["wall_s"], **tuning.line_fields(result, i)})
  return True


def label(point: dict[str, Any]) -> str:
  """A short variant label: the point without group/task, keys shortened to their last part (a
  member's option keeps its section: ``model.attention.score_kwargs.hidden`` -> ``score_kwargs.hidden``)."""
  def short(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[-2:]) if len(parts) > 2 and parts[-2].endswith("_kwargs") else parts[-1]
  parts = [f"{short(k)}={v}" for k, v in point.items() if k not in ("group", "task")]
  return ", ".join(parts) or "default"


def progress_bar(enabled: bool) -> Any:
  from rich import progress as rp  # pylint: disable=g-import-not-at-top
  return rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                     rp.TimeElapsedColumn(), rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
                     disable=not enabled, transient=False)
