"""The task contract: what every registered task gives the models and the runner.

A task is registered under kind ``task`` as a factory ``make(**kwargs) -> Task``
(``registry.register("task", "assoc_recall")(make_assoc_recall)``; inside attnlab use
``@register_task("assoc_recall")``, which also turns unknown kwargs into a ValueError listing the
valid ones). Batches are dicts of NumPy arrays, deterministic in (seed, split, step). Formats by
``family``:

| family            | batch keys (shapes)                                                        |
|-------------------|----------------------------------------------------------------------------|
| `classifier`      | inputs int32 [B, L] (tokens) or float32 [B, L, F] (features); label int32 [B] |
|                   | (image tasks, spec ``image_size``/``channels``: inputs float32 [B, S, S, C] |
|                   | in [0, 1]; visual question answering, spec ``question_dim``: also        |
|                   | question float32 [B, Q] and relational bool [B], see data.clevr)          |
| `seq2seq`         | inputs int32 [B, Ls]; labels int32 [B, Lt] (PAD=0 where shorter)            |
| `lm`              | inputs int32 [B, L]; labels int32 [B, L] (inputs shifted left by one)       |
| `node_classifier` | features float32 [N, F]; edges int32 [2, E]; labels int32 [N];              |
|                   | mask bool [N] (the nodes of the requested split) — the whole graph, or the |
|                   | split's computation subgraph (its nodes first), is one batch (data.graph) |

Token conventions for token tasks: 0 = PAD, 1 = BOS (decoder start), real tokens are >= 2 and
< ``spec["vocab_size"]``. ``Task.tokens`` (when not None) names every token id, for printing.

Splits. ``train`` batches are drawn afresh for every (seed, step). ``val`` and ``test`` are fixed
evaluation sets that do not depend on ``seed``: the same examples for every seed and every model, so
that comparisons are paired. Synthetic tasks generate them from a split-specific seed (``eval_size``
examples each); real tasks use their fixed split. The evaluation API:

* ``task.eval_set(split)``: the whole val/test set as one batch dict (cached in memory);
* ``task.num_batches(split, batch_size)``: ``ceil(len / batch_size)``;
* ``task.batch(split, i, batch_size)`` for ``i < num_batches``: chunk ``i`` of the eval set, in order
  (the last chunk may be shorter); concatenating the chunks gives ``eval_set(split)``.

``node_classifier`` tasks have one batch per split (the whole graph or the split's computation
subgraph, ``mask`` = the split's nodes), identical for every seed and step; their ``eval_size`` is
None.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from types import ModuleType
from typing import Any, Callable

import numpy as np

from attnlab import registry, validate

FAMILIES = ("classifier", "seq2seq", "lm", "node_classifier")
SPLITS = ("train", "val", "test")
PAD, BOS = 0, 1
FIRST_TOKEN = 2  # the first id of a real token
EVAL_SEED = 20240607  # the seed of synthetic val/test sets (independent of the training seed)
DATA_EXTRA = "pip install 'attnlab[data]'"


@dataclasses.dataclass
class Task:
  """Base class of tasks. Subclasses set the fields and implement ``batch`` (or, to get the
  evaluation API for free, ``train_batch`` and ``make_eval_set``).

  Attributes:
    name: the registered name.
    family: one of FAMILIES; decides the model family and the loss.
    spec: sizes a model needs: e.g. vocab_size, num_classes, input_dim, seq_len, label_len.
    metrics: metric names reported on val and test, e.g. ("loss", "accuracy"); accuracies are
      fractions in [0, 1].
    eval_size: number of examples in the fixed val and test sets (None = whole split).
    tokens: display string of each token id (len = spec["vocab_size"]), or None.
  """
  name: str
  family: str
  spec: dict[str, Any]
  metrics: tuple[str, ...] = ("loss", "accuracy")
  eval_size: int | None = None
  tokens: tuple[str, ...] | None = None
  _eval_cache: dict[str, dict[str, np.ndarray]] = dataclasses.field(
      default_factory=dict, init=False, repr=False, compare=False)

  def batch(self, split: str, step: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of ``split``: deterministic in (seed, split, step); val/test ignore ``seed`` and
    return chunk ``step`` (of ``batch_size`` examples) of the fixed evaluation set."""
    self.check_split(split)
    validate.int_at_least(f"task {self.name!r}", "batch_size", batch_size, 1)
    validate.int_at_least(f"task {self.name!r}", "step", step, 0)
    if split == "train":
      return self.train_batch(step, batch_size, seed)
    n = self.num_batches(split, batch_size)
    if step >= n:
      raise ValueError(f"task {self.name!r}: step {step} is past the {split} set "
                       f"({n} batches of {batch_size}); valid steps: 0..{n - 1}")
    full = self.eval_set(split)
    return {k: v[step * batch_size:(step + 1) * batch_size].copy() for k, v in full.items()}

  def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """A training batch determined by (seed, step)."""
    raise NotImplementedError

  def make_eval_set(self, split: str) -> dict[str, np.ndarray]:
    """The whole fixed ``split`` ('val' or 'test') set (called once, then cached)."""
    raise NotImplementedError

  def eval_set(self, split: str) -> dict[str, np.ndarray]:
    """The whole fixed val/test set as one batch (cached in memory; do not modify)."""
    self.check_split(split)
    if split == "train":
      raise ValueError(f"task {self.name!r}: eval_set is for 'val' and 'test'; training batches "
                       "come from batch('train', step, batch_size, seed)")
    if split not in self._eval_cache:
      self._eval_cache[split] = self.make_eval_set(split)
    return self._eval_cache[split]

  def num_batches(self, split: str, batch_size: int) -> int:
    """How many ``batch(split, i, batch_size)`` chunks cover the val/test set."""
    validate.int_at_least(f"task {self.name!r}", "batch_size", batch_size, 1)
    n = len(next(iter(self.eval_set(split).values())))
    return -(-n // batch_size)

  def check_split(self, split: str) -> None:
    if split not in SPLITS:
      raise ValueError(f"task {self.name!r}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def rng_for(seed: int, split: str, step: int = 0) -> np.random.Generator:
  """A NumPy generator determined by (seed, split, step) alone."""
  return np.random.default_rng([seed, SPLITS.index(split), step])


def eval_rng(split: str) -> np.random.Generator:
  """The generator of a synthetic task's fixed ``split`` set (same for every training seed)."""
  return rng_for(EVAL_SEED, split)


def epoch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
  """Indices [batch_size] of training batch ``step`` when ``n`` examples are visited in epochs,
  each epoch a fresh permutation determined by (seed, epoch)."""
  start = step * batch_size
  first, last = start // n, (start + batch_size - 1) // n
  perms = [np.random.default_rng([seed, len(SPLITS), e]).permutation(n) for e in range(first, last + 1)]
  return np.concatenate(perms)[start - first * n:start - first * n + batch_size]


def check_kwarg(task: str, kwarg: str, value: Any, minimum: int = 1) -> int:
  """An integer kwarg ``>= minimum``; otherwise a TypeError/ValueError naming the kwarg."""
  return validate.int_at_least(f"task {task!r}", f"kwarg {kwarg}", value, minimum)


def check_choice(task: str, kwarg: str, value: Any, choices: tuple[Any, ...]) -> Any:
  """A kwarg that must be one of ``choices``; otherwise a ValueError naming the kwarg."""
  return validate.choice(f"task {task!r}", f"kwarg {kwarg}", value, choices)


def kwarg_error(task: str, kwarg: str, message: str) -> ValueError:
  """A ValueError for an impossible kwarg value: ``task 'x': kwarg k ...``."""
  return ValueError(f"task {task!r}: kwarg {kwarg} {message}")


def import_extra(module: str, task: str) -> ModuleType:
  """Imports an optional dependency of the ``data`` extra, or says how to install it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"task {task!r} needs {module.split('.')[0]}, which is missing: "
                      f"{DATA_EXTRA}") from e


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
  """Registers a task factory under kind ``task``: keyword-only kwargs; an unknown kwarg is a
  ValueError that lists the valid kwargs with their defaults."""

  def wrap(factory: Callable[..., Task]) -> Callable[..., Task]:
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> Task:
      valid = ", ".join(f"{p.name}={p.default!r}" for p in signature.parameters.values())
      if args:
        raise TypeError(f"task {name!r}: kwargs are keyword arguments; valid kwargs: {valid}")
      unknown = sorted(set(kwargs) - set(signature.parameters))
      if unknown:
        raise ValueError(f"task {name!r}: unknown kwarg(s) {', '.join(map(repr, unknown))}; "
                         f"valid kwargs: {valid}")
      return factory(**kwargs)

    registry.register("task", name, make)
    return make

  return wrap
