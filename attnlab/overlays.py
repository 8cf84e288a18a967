"""Attention drawn over the image it looked at (matplotlib; called by attnlab.plots for image tasks).

``overlay_<group>_<task>.png``, one row per variant with a run's ``example.npz`` (the val example's
image, question and label, written by attnlab.train) and ``attention.npz``:

* a question's cross-attention over the g×g regions (a layer whose map is [H, 1, g²]), mean over
  heads, upsampled to the image and drawn over it as a heat map (the "football" figure);
* a self-attention map over the positions of a feature map ([H, N, N] with N = h·w: SAGAN's
  ``ImageSelfAttention``, or the regions' self-attention) for ONE query position (marked ×): the
  position of the object the question asks about (sort_of_clevr), else the brightest position.
"""

from __future__ import annotations

import math
import pathlib
import zipfile
from typing import Any

import numpy as np

from attnlab.data import clevr


def _load(run_dir: pathlib.Path | None) -> tuple[dict, dict] | None:
  if run_dir is None or not (run_dir / "example.npz").exists() or not (run_dir / "attention.npz").exists():
    return None
  try:
    with np.load(run_dir / "example.npz") as e, np.load(run_dir / "attention.npz") as a:
      return {k: e[k] for k in e.files}, {k: a[k] for k in a.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return None


def _side(n: int) -> int | None:
  g = math.isqrt(n)
  return g if g * g == n else None


Named = tuple[str, np.ndarray]


def split_maps(maps: dict[str, np.ndarray]) -> tuple[Named | None, Named | None]:
  """(the first question → regions map [g, g], the first position self-attention map [H, N, N]), by
  the layers' shapes; None where the run has no such layer."""
  cross = selfs = None
  for name in sorted(maps):
    w = maps[name]
    if w.ndim != 3 or _side(w.shape[-1]) is None:
      continue
    if w.shape[1] == 1 and cross is None:
      g = _side(w.shape[-1])
      cross = (name, w.mean(0)[0].reshape(g, g))
    elif w.shape[1] == w.shape[2] and selfs is None:
      selfs = (name, w)
  return cross, selfs


def query_position(example: dict[str, np.ndarray], g: int) -> int:
  """The position (row-major on a g×g map) of the asked-about object, else the brightest cell."""
  image = example["inputs"]
  s = image.shape[0]
  lit = np.any(image > 0, -1).astype(np.float32)
  if "question" in example and image.shape[-1] == 3:
    rgb = clevr.RGB[int(np.argmax(example["question"][:clevr.NUM_OBJECTS]))]
    lit = np.all(np.isclose(image, rgb), -1).astype(np.float32)
  cells = lit[:s - s % g, :s - s % g].reshape(g, s // g, g, s // g).sum((1, 3))
  return int(np.argmax(cells))


def _upsample(m: np.ndarray, size: int) -> np.ndarray:
  reps = -(-size // m.shape[0])
  return np.kron(m, np.ones((reps, reps)))[:size, :size]


def draw(plt: Any, runs: list[tuple[str, pathlib.Path | None]], title: str) -> Any | None:
  """The figure of ``runs`` [(variant, run dir)], or None when no run has an image and a map."""
  rows = []
  for variant, run_dir in runs:
    loaded = _load(run_dir)
    if loaded is not None and any(m is not None for m in split_maps(loaded[1])):
      rows.append((variant, *loaded))
  if not rows:
    return None
  fig, axes = plt.subplots(len(rows), 2, figsize=(6.4, 3.1 * len(rows)), squeeze=False, layout="constrained")
  for (variant, example, maps), (ax_c, ax_s) in zip(rows, axes):
    image = np.clip(example["inputs"], 0, 1)
    size = image.shape[0]
    said = ""
    if "question" in example:
      said = f"\n{clevr.describe(example['question'])} → {clevr.ANSWERS[int(example['label'])]}"
    cross, selfs = split_maps(maps)
    for ax in (ax_c, ax_s):
      ax.imshow(image if image.shape[-1] == 3 else image[..., 0], cmap="gray")
      ax.set_xticks([])
      ax.set_yticks([])
    if cross is not None:
      ax_c.imshow(_upsample(cross[1], size), cmap="inferno", alpha=0.55, vmin=0.0)
      ax_c.set_title(f"{variant}: question → regions{said}", fontsize=7)
    else:
      ax_c.set_title(f"{variant}: no question attention{said}", fontsize=7)
    if selfs is not None:
      name, w = selfs
      g = _side(w.shape[-1])
      q = query_position(example, g)
      ax_s.imshow(_upsample(w.mean(0)[q].reshape(g, g), size), cmap="inferno", alpha=0.55, vmin=0.0)
      cell = size / g
      ax_s.plot([(q % g + 0.5) * cell - 0.5], [(q // g + 0.5) * cell - 0.5], "x", color="cyan", ms=9, mew=2)
      ax_s.set_title(f"self-attention of position × ({name})", fontsize=7)
    else:
      ax_s.set_title("no self-attention", fontsize=7)
  fig.suptitle(title, fontsize=9)
  return fig
