"""The task contract: what every registered task gives the models and the runner.

A task is registered under kind ``task`` as a factory ``make(**knobs) -> Task``
(``registry.register("task", "assoc_recall")(make_assoc_recall)``). Batches are dicts of NumPy
arrays, deterministic in (seed, split, step). Formats by ``family``:

| family            | batch keys (shapes)                                                        |
|-------------------|----------------------------------------------------------------------------|
| `classifier`      | inputs int32 [B, L] (tokens) or float32 [B, L, F] (features); label int32 [B] |
| `seq2seq`         | inputs int32 [B, Ls]; targets int32 [B, Lt] (PAD=0 where shorter)           |
| `lm`              | inputs int32 [B, L]; targets int32 [B, L] (inputs shifted left by one)      |
| `node_classifier` | features float32 [N, F]; edges int32 [2, E]; labels int32 [N];              |
|                   | mask bool [N] (the nodes of the requested split) — the whole graph is one batch |

Token conventions for token tasks: 0 = PAD, 1 = BOS (decoder start), real tokens are >= 2 and
< ``spec["vocab_size"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

FAMILIES = ("classifier", "seq2seq", "lm", "node_classifier")
SPLITS = ("train", "val", "test")
PAD, BOS = 0, 1


@dataclasses.dataclass
class Task:
  """Base class of tasks. Subclasses set the fields and implement ``batch``.

  Attributes:
    name: the registered name.
    family: one of FAMILIES; decides the model family and the loss.
    spec: sizes a model needs: e.g. vocab_size, num_classes, input_dim, seq_len, target_len.
    metrics: metric names reported on val and test, e.g. ("loss", "accuracy"); accuracies are
      fractions in [0, 1].
    eval_size: number of examples in the fixed val and test sets (None = whole split).
  """
  name: str
  family: str
  spec: dict[str, Any]
  metrics: tuple[str, ...] = ("loss", "accuracy")
  eval_size: int | None = None

  def batch(self, split: str, step: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of ``split``: deterministic in (seed, split, step); val/test ignore ``step``'s
    randomness and cover the fixed evaluation set in order."""
    raise NotImplementedError

  def check_split(self, split: str) -> None:
    if split not in SPLITS:
      raise ValueError(f"task {self.name!r}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def rng_for(seed: int, split: str, step: int = 0) -> np.random.Generator:
  """A NumPy generator determined by (seed, split, step) alone."""
  return np.random.default_rng([seed, SPLITS.index(split), step])
