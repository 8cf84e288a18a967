"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes) as sequences.

``layout="rows"``: the 8 rows are the sequence, 8 pixel features each (inputs [B, 8, 8]);
``layout="patches"``: non-overlapping ``patch_size`` x ``patch_size`` patches in raster order
(inputs [B, (8/p)^2, p^2]). Pixels are scaled from 0..16 to [0, 1].

Fixed stratified split (independent of the training seed): within each class the images are shuffled
with a fixed seed; all images are then ordered by their relative rank within their class (a
round-robin over classes), so every prefix is stratified; the first ``eval_size`` images are the test
set, the next ``eval_size`` the val set, the rest train (default 360 / 360 / 1077). Training visits
the train set in epochs, reshuffled per (seed, epoch). Needs the ``data`` extra (scikit-learn).
"""

from __future__ import annotations

import numpy as np

from attnlab.data.base import Task, check_choice, check_kwarg, epoch_indices, import_extra, kwarg_error, \
  register_task

SIDE = 8
SPLIT_SEED = 0


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
  """A permutation of the examples whose every prefix has (nearly) the class proportions."""
  rng = np.random.default_rng(seed)
  rank = np.empty(len(labels))
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    rank[rng.permutation(members)] = (np.arange(len(members)) + 0.5) / len(members)
  return np.argsort(rank, kind="stable")


class ArrayTask(Task):
  """A classifier over fixed arrays per split: train batches by epochs, val/test as stored."""

  def __init__(self, name: str, spec: dict, splits: dict[str, dict[str, np.ndarray]]):
    super().__init__(name, "classifier", spec, eval_size=len(splits["val"]["label"]))
    self.splits = splits

  def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    train = self.splits["train"]
    idx = epoch_indices(len(train["label"]), step, batch_size, seed)
    return {k: v[idx] for k, v in train.items()}

  def make_eval_set(self, split: str) -> dict[str, np.ndarray]:
    return self.splits[split]


@register_task("digits")
def make_digits(*, layout: str = "rows", patch_size: int = 2, eval_size: int = 360) -> Task:
  """Digits. Kwargs: layout ("rows" | "patches"), patch_size (patches only; divides 8), eval_size
  (images in val and in test each)."""
  name = "digits"
  check_choice(name, "layout", layout, ("rows", "patches"))
  patch_size = check_kwarg(name, "patch_size", patch_size)
  eval_size = check_kwarg(name, "eval_size", eval_size)
  if layout == "patches" and SIDE % patch_size:
    raise kwarg_error(name, "patch_size", f"({patch_size}) must divide the image side {SIDE}")
  datasets = import_extra("sklearn.datasets", name)
  data = datasets.load_digits()
  images = (np.asarray(data.images, np.float32) / 16.0)  # [N, 8, 8] in [0, 1]
  labels = np.asarray(data.target, np.int32)  # [N]
  n, classes = len(labels), len(np.unique(labels))
  if 2 * eval_size > n - classes:
    raise kwarg_error(name, "eval_size", f"({eval_size}) is too large: val and test take "
                     f"2 * eval_size of the {n} images and train needs at least {classes}")
  if layout == "rows":
    seqs = images  # [N, 8, 8]
  else:
    g = SIDE // patch_size
    seqs = images.reshape(n, g, patch_size, g, patch_size).transpose(0, 1, 3, 2, 4)  # [N, g, g, p, p]
    seqs = seqs.reshape(n, g * g, patch_size * patch_size)  # [N, L, p*p]
  order = stratified_order(labels, SPLIT_SEED)
  parts = {"test": order[:eval_size], "val": order[eval_size:2 * eval_size], "train": order[2 * eval_size:]}
  splits = {s: {"inputs": np.ascontiguousarray(seqs[i]), "label": labels[i]} for s, i in parts.items()}
  spec = {"num_classes": classes, "input_dim": seqs.shape[2], "seq_len": seqs.shape[1]}
  return ArrayTask(name, spec, splits)
