"""The vision pieces end to end: per-kind accuracies, the overlays' choices, a tiny vision sweep."""

import numpy as np
import pytest

from attnlab import config, losses, overlays, registry, report, sweep
from attnlab.data import clevr


class _Fixed:
  family = "classifier"

  def __init__(self, logits):
    self.logits = logits

  def __call__(self, batch, *, train):
    return self.logits, {}


def test_relational_and_nonrelational_accuracy_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(10, 12)).astype(np.float32)
  labels = rng.integers(0, 12, size=10).astype(np.int32)
  labels[:4] = logits[:4].argmax(-1)  # some right answers
  rel = np.arange(10) % 3 == 0
  _, m = losses.loss_and_metrics(_Fixed(logits), {"label": labels, "relational": rel}, family="classifier",
                                 train=False)
  right = logits.argmax(-1) == labels
  np.testing.assert_allclose(m["relational_accuracy"], right[rel].mean(), rtol=1e-6)
  np.testing.assert_allclose(m["nonrelational_accuracy"], right[~rel].mean(), rtol=1e-6)
  np.testing.assert_allclose(m["accuracy"], right.mean(), rtol=1e-6)


def test_overlay_finds_the_maps_by_shape_and_the_asked_object():
  maps = {"relate/blocks/0/self_attn": np.full((2, 16, 16), 1 / 16), "attn": np.eye(16)[None, 5:6],
          "other": np.ones((1, 3, 5))}
  (cname, cross), (sname, selfs) = overlays.split_maps(maps)
  assert cname == "attn" and cross.shape == (4, 4) and cross[1, 1] == 1.0 and cross.sum() == 1.0
  assert sname == "relate/blocks/0/self_attn" and selfs.shape == (2, 16, 16)
  task = registry.get("task", "sort_of_clevr")(image_size=32, eval_size=2)
  b = task.eval_set("val")
  centres, _ = clevr.scenes(np.random.default_rng(1), 1, 32, 5)
  image = clevr.render(centres, np.zeros((1, 6), int), 32, 5)[0]
  for colour in range(6):
    q = np.zeros(11, np.float32)
    q[colour] = 1
    row, col = (centres[0, colour] // 8).astype(int)
    assert overlays.query_position({"inputs": image, "question": q}, 4) == 4 * row + col
  assert overlays.query_position({"inputs": b["inputs"][0]}, 4) in range(16)


def test_tiny_vision_sweep_reports_both_kinds_and_draws_overlays(tmp_path):
  pytest.importorskip("matplotlib")
  s = config.load_file("configs/sweeps/vision.py:tiny")
  sweep.run_sweep(s, str(tmp_path), progress=False)
  for metric in ("relational_accuracy", "nonrelational_accuracy"):
    text = report.write(str(tmp_path), metric=metric, plots=metric == "relational_accuracy")
    assert "mode=mlp" in text and "mode=self_cross" in text
  runs = sorted((tmp_path / "runs").iterdir())
  assert all((r / "example.npz").exists() for r in runs if "self_cross" in (r / "config.json").read_text())
  with np.load(next(r for r in runs if (r / "attention.npz").exists()) / "attention.npz") as z:
    shapes = {k: z[k].shape for k in z.files}
  assert shapes == {"attn": (1, 1, 36), "relate/blocks/0/self_attn": (1, 36, 36)}  # 6x6 regions, 1 head
  overlay, = (tmp_path / "plots").glob("overlay_mode_*.png")  # one per group and task
  assert overlay.stat().st_size > 1000


@pytest.mark.parametrize("kernel", [2, 3])
def test_conv_stack_is_a_strided_convolution(kernel):
  from flax import nnx
  from attnlab.models.vision import ConvStack
  stack = ConvStack(3, 4, 1, kernel=kernel, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
  w = np.asarray(stack.convs[0].kernel[...]).reshape(kernel, kernel, 3, 4)  # [k, k, C, out]
  bias = np.asarray(stack.convs[0].bias[...])
  padded = np.pad(x, ((0, 0), (0, kernel - 2), (0, kernel - 2), (0, 0)))  # SAME, stride 2
  want = np.zeros((2, 3, 3, 4), np.float32)
  for i in range(3):
    for j in range(3):
      window = padded[:, 2 * i:2 * i + kernel, 2 * j:2 * j + kernel]  # [B, k, k, C]
      want[:, i, j] = np.maximum(np.einsum("bxyc,xyco->bo", window, w) + bias, 0)
  np.testing.assert_allclose(np.asarray(stack(x)), want, rtol=1e-5, atol=1e-5)
