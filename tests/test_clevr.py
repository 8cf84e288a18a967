"""The sort_of_clevr task: answers against a solver that reads the objects back from the pixels."""

import math

import numpy as np
import pytest

from attnlab import registry
from attnlab.data import clevr

COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "orange": (1, 0.5, 0),
           "grey": (0.5, 0.5, 0.5), "yellow": (1, 1, 0)}
ANSWER = ["square", "circle", "left", "right", "top", "bottom", "1", "2", "3", "4", "5", "6"]


def read_objects(image):
  """{colour: (row, col, shape)} from the pixels alone: the centroid of the colour's pixels, and
  'square' when they fill their bounding box, else 'circle'."""
  objects = {}
  for name, rgb in COLOURS.items():
    ys, xs = np.nonzero(np.all(np.isclose(image, rgb), axis=-1))
    assert len(ys) > 0, f"no {name} object"
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    objects[name] = (ys.mean() + 0.5, xs.mean() + 0.5, "square" if box == len(ys) else "circle")
  return objects


def solve(image, question):
  """The answer to one question, as a word, computed from the decoded objects."""
  objects = read_objects(image)
  colour = list(COLOURS)[int(np.argmax(question[:6]))]
  relational = bool(question[7])
  sub = int(np.argmax(question[8:]))
  y, x, shape = objects[colour]
  size = image.shape[0]
  if not relational:
    return [shape, "left" if x < size / 2 else "right", "top" if y < size / 2 else "bottom"][sub]
  others = [(math.hypot(oy - y, ox - x), s) for c, (oy, ox, s) in objects.items() if c != colour]
  if sub == 0:
    return min(others)[1]
  if sub == 1:
    return max(others)[1]
  return str(1 + sum(s == shape for _, s in others))


@pytest.mark.parametrize("size", [24, 32])
def test_answers_match_a_solver_reading_the_pixels(size):
  t = registry.get("task", "sort_of_clevr")(image_size=size, eval_size=40)
  for b in (t.batch("train", 3, 60, seed=1), t.eval_set("val")):
    for image, q, label, rel in zip(b["inputs"], b["question"], b["label"], b["relational"]):
      assert ANSWER[label] == solve(image, q)
      assert rel == bool(q[7]) and q[:6].sum() == q[6:8].sum() == q[8:].sum() == 1
    assert np.array_equal(b["relational"], np.arange(len(b["label"])) % 2 == 1)
  labels = np.concatenate([t.batch("train", s, 60, seed=0)["label"] for s in range(5)])
  assert set(labels) >= set(range(8))  # every kind of answer occurs (counts 3.. are rarer)


def test_objects_are_apart_distinct_colours_and_inside_the_image():
  size, obj = 32, 5
  centres, shapes = clevr.scenes(np.random.default_rng(0), 200, size, obj)
  images = clevr.render(centres, shapes, size, obj)
  for image, c, shape in zip(images, centres, shapes):
    lit = np.any(image > 0, axis=-1)
    per_colour = [np.all(np.isclose(image, rgb), -1) for rgb in COLOURS.values()]
    assert sum(m.sum() for m in per_colour) == lit.sum()  # every lit pixel is one object's colour
    for i in range(6):
      assert per_colour[i].sum() == (21 if shape[i] else 25)  # a 5x5 square; a circle lacks its corners
      for j in range(i):  # objects at least one pixel apart
        assert np.max(np.abs(c[i] - c[j])) >= obj + 1
    assert np.all(c - obj / 2 >= 0) and np.all(c + obj / 2 <= size)


@pytest.mark.parametrize("size,obj", [(32, 5), (40, 7), (48, 6)])
def test_render_lights_the_pixels_whose_centres_lie_in_each_shape(size, obj):
  centres, shapes = clevr.scenes(np.random.default_rng(size), 20, size, obj)
  images = clevr.render(centres, shapes, size, obj)
  for image, c, shape in zip(images, centres, shapes):
    expect = np.zeros((size, size, 3), np.float32)
    for (cy, cx), s, rgb in zip(c, shape, COLOURS.values()):
      for y in range(size):
        for x in range(size):
          dy, dx = y + 0.5 - cy, x + 0.5 - cx
          inside = abs(dy) < obj / 2 and abs(dx) < obj / 2 and (s == 0 or dy * dy + dx * dx <= obj * obj / 4)
          if inside:
            expect[y, x] = rgb
    np.testing.assert_array_equal(image, expect)


def test_deterministic_in_seed_and_step_and_eval_fixed():
  make = registry.get("task", "sort_of_clevr")
  a, b = make(eval_size=8), make(eval_size=8)
  x = a.batch("train", 2, 6, seed=0)
  for k, v in b.batch("train", 2, 6, seed=0).items():
    np.testing.assert_array_equal(v, x[k])
  assert not np.array_equal(a.batch("train", 3, 6, seed=0)["inputs"], x["inputs"])
  assert not np.array_equal(a.batch("train", 2, 6, seed=1)["inputs"], x["inputs"])
  np.testing.assert_array_equal(a.eval_set("test")["inputs"], b.eval_set("test")["inputs"])


@pytest.mark.parametrize("kwargs,match", [({"image_size": 30}, "image_size"),
                                         ({"image_size": 20}, "image_size"),
                                         ({"object_size": 8}, "object_size"), ({"eval_size": 7}, "eval_size"),
                                         ({"colours": 3}, "valid kwargs")])
def test_bad_kwargs_name_the_kwarg(kwargs, match):
  with pytest.raises(ValueError, match=match):
    registry.get("task", "sort_of_clevr")(**kwargs)
