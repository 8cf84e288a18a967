"""``sort_of_clevr``: Santoro et al. 2017's Sort-of-CLEVR, generated on the fly (family ``classifier``).

An image holds 6 objects, one of each colour (red, green, blue, orange, grey, yellow), each a
square or a circle, on a black background. The image is a 4×4 grid of cells; the objects sit in 6
distinct random cells, each at a random pixel offset inside its cell that leaves at least one free
pixel to the next cell, so objects never overlap (and a CNN whose last feature map is 4×4 sees each
object in one region). A question is a vector of ``QUESTION_DIM`` = 11 (Santoro's
encoding): colour one-hot [6], kind one-hot [non-relational, relational], subtype one-hot [3]:

| kind           | subtype | question about the object of colour c              | answers          |
|----------------|---------|----------------------------------------------------|------------------|
| non-relational | 0       | its shape                                          | square, circle   |
| non-relational | 1       | is it on the left or right half                    | left, right      |
| non-relational | 2       | is it in the top or bottom half                    | top, bottom      |
| relational     | 0       | the shape of the object closest to it              | square, circle   |
| relational     | 1       | the shape of the object furthest from it           | square, circle   |
| relational     | 2       | how many objects have its shape (itself included)  | 1 .. 6           |

Labels index ``ANSWERS`` (12 classes); distances are between object centres (scenes with ties are
drawn again). Example i of a batch is relational when i is odd: every batch of even size is
half relational, half non-relational, and the metrics ``relational_accuracy`` and
``nonrelational_accuracy`` (attnlab.losses) are exact means over each kind.

Batch: ``inputs`` (the image) float32 [B, S, S, 3] in [0, 1], ``question`` float32 [B, 11], ``label``
int32 [B],
``relational`` bool [B]. Kwargs: ``image_size`` S (a multiple of 4, at least 24; default 32, against
the paper's 75: a 4×4 map of 8-pixel cells keeps a CNN small enough for a 2-core CPU), ``object_size``
(side of a square and diameter of a circle, 5 .. S/4 − 1, so circles and squares differ in
pixels; default max(5, S/4 − 3)), ``eval_size``.
"""

from __future__ import annotations

import numpy as np

from attnlab.data.base import Task, check_kwarg, kwarg_error, register_task
from attnlab.data.synthetic import SyntheticTask

GRID = 4
NUM_OBJECTS = 6
COLOURS = ("red", "green", "blue", "orange", "grey", "yellow")
RGB = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.5, 0], [0.5, 0.5, 0.5], [1, 1, 0]], np.float32)
SHAPES = ("square", "circle")
ANSWERS = ("square", "circle", "left", "right", "top", "bottom", "1", "2", "3", "4", "5", "6")
QUESTION_DIM = NUM_OBJECTS + 2 + 3
METRICS = ("loss", "accuracy", "relational_accuracy", "nonrelational_accuracy")


def scenes(rng: np.random.Generator, n: int, size: int, object_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Object centres [n, 6, 2] (row, column, in pixels) and shapes [n, 6] (0 square, 1 circle) of ``n``
  images; object j has colour j. Scenes where some object has two nearest or two furthest objects
  are drawn again, so relational answers are unique."""
  centres = np.empty((n, NUM_OBJECTS, 2))
  todo = np.arange(n)
  while len(todo):
    centres[todo] = _centres(rng, len(todo), size, object_size)
    todo = todo[_ties(centres[todo])]
  return centres, rng.integers(0, 2, size=(n, NUM_OBJECTS))


def _centres(rng: np.random.Generator, n: int, size: int, object_size: int) -> np.ndarray:
  cell = size // GRID
  cells = rng.permuted(np.tile(np.arange(GRID * GRID), (n, 1)), axis=1)[:, :NUM_OBJECTS]  # [n, 6]
  corner = np.stack([cells // GRID, cells % GRID], -1) * cell  # [n, 6, 2]
  offset = rng.integers(0, cell - object_size, size=(n, NUM_OBJECTS, 2))  # a free pixel to the next cell
  return corner + offset + object_size / 2


def _ties(centres: np.ndarray) -> np.ndarray:
  """[n] bool: some object's nearest or furthest other object is not unique."""
  d2 = np.sum((centres[:, :, None] - centres[:, None]) ** 2, -1)  # [n, 6, 6], exact (half-pixels)
  near = np.where(np.eye(NUM_OBJECTS, dtype=bool), np.inf, d2)
  tied = lambda d, best: np.sum(d == best(d, -1, keepdims=True), -1) > 1  # [n, 6]
  return np.any(tied(near, np.min) | tied(d2, np.max), -1)


def render(centres: np.ndarray, shapes: np.ndarray, size: int, object_size: int) -> np.ndarray:
  """Images [n, S, S, 3]: an object covers the s×s pixels around its centre (a square), or those
  whose centres lie within s/2 of it (a circle: the square less its corners). Each object is one
  s×s stamp written at its corner (centres sit s/2 from whole pixels, as ``scenes`` places them)."""
  n, s = len(centres), object_size
  corner = centres - s / 2  # [n, 6, 2]
  top = np.rint(corner).astype(np.int64)
  if np.any(np.abs(corner - top) > 1e-6) or np.any(top < 0) or np.any(top + s > size):
    raise ValueError("render: object centres must lie s/2 from whole pixels, inside the image")
  d = np.arange(s) + 0.5 - s / 2  # pixel centres relative to the object's centre
  square = np.ones((s, s), bool)
  circle = d[:, None] ** 2 + d[None, :] ** 2 <= (s / 2) ** 2
  stamps = np.stack([square, circle]).astype(np.float32)[shapes]  # [n, 6, s, s]
  rows = top[:, :, 0, None, None] + np.arange(s)[:, None]  # [n, 6, s, 1]
  cols = top[:, :, 1, None, None] + np.arange(s)[None, :]  # [n, 6, 1, s]
  image = np.zeros((n, size, size, 3), np.float32)
  image[np.arange(n)[:, None, None, None], rows, cols] = stamps[..., None] * RGB[:, None, None]
  return image  # objects never overlap


def answers(centres: np.ndarray, shapes: np.ndarray, colour: np.ndarray, relational: np.ndarray,
            subtype: np.ndarray, size: int) -> np.ndarray:
  """Label indices into ANSWERS [n] of the questions (colour, relational, subtype) [n] each."""
  n = len(colour)
  rows = np.arange(n)
  me = centres[rows, colour]  # [n, 2]
  dist = np.linalg.norm(centres - me[:, None], axis=-1)  # [n, 6]
  near = np.argmin(np.where(dist > 0, dist, np.inf), -1)
  far = np.argmax(dist, -1)
  same = np.sum(shapes == shapes[rows, colour][:, None], -1)  # [n] in 1..6
  non_rel = np.select([subtype == 0, subtype == 1], [shapes[rows, colour], 2 + (me[:, 1] >= size / 2)],
                      4 + (me[:, 0] >= size / 2))
  rel = np.select([subtype == 0, subtype == 1], [shapes[rows, near], shapes[rows, far]], 5 + same)
  return np.where(relational, rel, non_rel).astype(np.int32)


@register_task("sort_of_clevr")
def make_sort_of_clevr(*, image_size: int = 32, object_size: int | None = None,
                       eval_size: int = 500) -> Task:
  """Sort-of-CLEVR. Kwargs: image_size (multiple of 4, >= 24), object_size (5 .. image_size/4 - 1;
  default max(5, image_size/4 - 3)), eval_size (val and test each; even, so each is half relational)."""
  name = "sort_of_clevr"
  size = check_kwarg(name, "image_size", image_size, 24)
  if size % GRID:
    raise kwarg_error(name, "image_size", f"({size}) must be a multiple of {GRID} (a {GRID}x{GRID} grid)")
  cell = size // GRID
  obj = max(5, cell - 3) if object_size is None else check_kwarg(name, "object_size", object_size, 5)
  if obj > cell - 1:
    raise kwarg_error(name, "object_size", f"({obj}) must be at most image_size/{GRID} - 1 = {cell - 1}")
  eval_size = check_kwarg(name, "eval_size", eval_size, 2)
  if eval_size % 2:
    raise kwarg_error(name, "eval_size", f"({eval_size}) must be even (half the questions are relational)")

  def generate(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    centres, shapes = scenes(rng, n, size, obj)
    colour = rng.integers(0, NUM_OBJECTS, size=n)
    subtype = rng.integers(0, 3, size=n)
    relational = np.arange(n) % 2 == 1
    question = np.zeros((n, QUESTION_DIM), np.float32)
    question[np.arange(n), colour] = 1.0
    question[np.arange(n), NUM_OBJECTS + relational] = 1.0
    question[np.arange(n), NUM_OBJECTS + 2 + subtype] = 1.0
    return {"inputs": render(centres, shapes, size, obj), "question": question,
            "label": answers(centres, shapes, colour, relational, subtype, size), "relational": relational}

  spec = {"num_classes": len(ANSWERS), "image_size": size, "channels": 3, "question_dim": QUESTION_DIM}
  return SyntheticTask(name, "classifier", spec, generate, eval_size=eval_size, tokens=None, metrics=METRICS)


def describe(question: np.ndarray) -> str:
  """A question vector [11] in words, e.g. 'red: shape of the closest object?'."""
  colour = COLOURS[int(np.argmax(question[:NUM_OBJECTS]))]
  relational, sub = bool(question[NUM_OBJECTS + 1]), int(np.argmax(question[NUM_OBJECTS + 2:]))
  asks = (("shape?", "left or right?", "top or bottom?"),
          ("shape of the closest object?", "shape of the furthest object?", "how many of its shape?"))
  return f"{colour}: {asks[relational][sub]}"
