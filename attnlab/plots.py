"""Plots of a sweep report (matplotlib from the ``plots`` extra; imported lazily by attnlab.report).

* ``<group>.png``: the metric per variant per task, bars with 95% CI error bars, seeds as dots;
* ``curves_<group>.png``: val metric (mean over seeds) against step, one line per variant;
* ``attention_<group>_<task>.png``: the first attention layer's weights (mean over heads) of one
  val example per variant (query rows × key columns; for graphs target × source over the first 34
  nodes) — what each kind of attention attends to;
* ``overlay_<group>_<task>.png`` (image tasks): the attention drawn over the image (attnlab.overlays).
"""

from __future__ import annotations

import math
import pathlib
import warnings
import zipfile
from typing import Any

import numpy as np

from attnlab import overlays, results


def _plt() -> Any:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("attnlab report plots need matplotlib: pip install 'attnlab[plots]' "
                      "(or pass --noplots)") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _blocks(rows: list[Any]) -> dict[str, dict[str, list[Any]]]:
  out: dict[str, dict[str, list[Any]]] = {}
  for r in rows:
    out.setdefault(r.group, {}).setdefault(r.task, []).append(r)
  return out


def _run_dir(workdir: pathlib.Path, run_id: str) -> pathlib.Path | None:
  d = workdir / "runs" / run_id
  return d if d.exists() else None


def write_all(workdir: pathlib.Path, rows: list[Any], metric: str, split: str) -> list[pathlib.Path]:
  plt = _plt()
  out_dir = workdir / "plots"
  out_dir.mkdir(exist_ok=True)
  written = []
  for group, tasks in _blocks(rows).items():
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, (task, rs) in zip(axes[0], tasks.items()):
      x = np.arange(len(rs))
      ci = [0.0 if math.isnan(r.ci) else r.ci for r in rs]
      ax.bar(x, [r.mean for r in rs], yerr=ci, capsize=3, color="#8fb3d9")
      for i, r in enumerate(rs):
        ax.plot([i] * len(r.values), r.values, "k.", ms=4)
      ax.set_xticks(x, [r.variant for r in rs], rotation=35, ha="right", fontsize=7)
      ax.set_title(task)
      ax.set_ylabel(f"{split} {metric}")
    fig.suptitle(f"{group}: {split} {metric}, mean ± 95% CI")
    written.append(_save(plt, fig, out_dir / f"{group}.png"))

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.4), squeeze=False)
    any_curve = False
    for ax, (task, rs) in zip(axes[0], tasks.items()):
      for r in rs:
        run_dir = _run_dir(workdir, r.run_id)
        curve = results.learning_curves(run_dir, metric, r.rate_index, r.num_rates) if run_dir else None
        if curve is not None:
          ax.plot(*curve, label=r.variant)
          any_curve = True
      ax.set_title(task)
      ax.set_xlabel("step")
      ax.set_ylabel(f"val {metric}")
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    if any_curve:
      written.append(_save(plt, fig, out_dir / f"curves_{group}.png"))
    else:
      plt.close(fig)

    for task, rs in tasks.items():
      maps = [(r.variant, _first_map(_run_dir(workdir, r.run_id))) for r in rs]
      maps = [(v, m) for v, m in maps if m is not None]
      if not maps:
        continue
      fig, axes = plt.subplots(1, len(maps), figsize=(2.8 * len(maps) + 0.8, 3.0), squeeze=False,
                               layout="constrained")
      vmax = max(float(m.max()) for _, m in maps) or 1.0  # one colour scale: weights comparable
      for ax, (variant, m) in zip(axes[0], maps):
        image = ax.imshow(m, cmap="viridis", aspect="auto", vmin=0.0, vmax=vmax)
        ax.set_title(variant, fontsize=7)
        ax.set_xlabel("key", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
      fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
      fig.suptitle(f"{group} · {task}: attention of one val example (layer 1, mean over heads)")
      written.append(_save(plt, fig, out_dir / f"attention_{group}_{task}.png"))
      fig = overlays.draw(plt, [(r.variant, _run_dir(workdir, r.run_id)) for r in rs],
                          f"{group} · {task}: attention over the image of one val example (mean over heads)")
      if fig is not None:
        written.append(_save(plt, fig, out_dir / f"overlay_{group}_{task}.png"))
  return written


def _first_map(run_dir: pathlib.Path | None) -> np.ndarray | None:
  """[Lq, Lk] (mean over heads) of the first layer in the run's attention.npz."""
  if run_dir is None or not (run_dir / "attention.npz").exists():
    return None
  try:
    return _read_map(run_dir / "attention.npz")
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    warnings.warn(f"{run_dir / 'attention.npz'}: unreadable ({e}); its plot is left out")
    return None


def _read_map(path: pathlib.Path) -> np.ndarray | None:
  with np.load(path) as z:
    names = sorted(z.files)
    edges = [n for n in names if n.endswith("/edges")]
    if edges:
      base = edges[0][: -len("/edges")]
      e, a = z[f"{base}/edges"], z[f"{base}/alpha"]
      n = min(34, int(e.max()) + 1)
      return dense_graph_map(e, a, n).mean(0)
    if not names:
      return None
    w = z[names[0]]
  return w.mean(0) if w.ndim == 3 else (w if w.ndim == 2 else None)


def dense_graph_map(edges: np.ndarray, alpha: np.ndarray, n: int) -> np.ndarray:
  """Edge weights (edges [2, E] source→target, alpha [E, H]) -> [H, n, n]: row = target node."""
  out = np.zeros((alpha.shape[-1], n, n), np.float32)
  src, dst = edges
  keep = (src < n) & (dst < n)
  out[:, dst[keep], src[keep]] = alpha[keep].T
  return out


def _save(plt: Any, fig: Any, path: pathlib.Path) -> pathlib.Path:
  if not fig.get_layout_engine():
    fig.tight_layout()
  try:
    results.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  finally:
    plt.close(fig)
  return path
