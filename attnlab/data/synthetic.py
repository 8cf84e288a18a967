"""Synthetic tasks with known answers, generated on the fly (deterministic per seed).

* ``assoc_recall`` (classifier): ``k1 v1 k2 v2 ... kn vn ? q`` -> the value paired with key ``q``.
  Attention as information retrieval: the query must find its key and read the value beside it.
  Keys and values have disjoint vocabularies; the label is the value's index in [0, num_values).
* ``copy``, ``reverse``, ``sort`` (seq2seq): the labels are the source, reversed, or sorted by token
  id. With ``min_length < length`` source lengths vary and the source and labels are PAD-ed at the end.
  Each output position needs one (copy/reverse) or a content-chosen (sort) source position: cross-attention.
* ``selective_copy`` (seq2seq): ``num_marked`` content tokens sit at random positions of a long
  sequence of noise tokens (a disjoint noise vocabulary; ``noise_vocab=1`` is the blank-token version
  of Gu & Dao 2023); the labels are the content tokens in order. Each output reads exactly one
  position out of many: the setting where hard attention should shine.

Token layout (all tasks): 0 PAD, 1 BOS, then the task's symbol groups in the order listed in
``Task.tokens``. Val/test are fixed sets of ``eval_size`` examples (``base.eval_rng``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from attnlab.data.base import (FIRST_TOKEN, PAD, Task, check_kwarg, eval_rng, kwarg_error, register_task,
                               rng_for)

Generator = Callable[[np.random.Generator, int], dict[str, np.ndarray]]


class SyntheticTask(Task):
  """A task whose examples come from ``generate(rng, n) -> batch`` (train: rng of (seed, step))."""

  def __init__(self, name: str, family: str, spec: dict, generate: Generator, *, eval_size: int,
               tokens: tuple[str, ...], metrics: tuple[str, ...] = ("loss", "accuracy")):
    super().__init__(name, family, spec, metrics=metrics, eval_size=eval_size, tokens=tokens)
    self.generate = generate

  def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    return self.generate(rng_for(seed, "train", step), batch_size)

  def make_eval_set(self, split: str) -> dict[str, np.ndarray]:
    return self.generate(eval_rng(split), self.eval_size)


def _names(prefix: str, n: int) -> tuple[str, ...]:
  return tuple(f"{prefix}{i}" for i in range(n))


def _lengths(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
  return rng.integers(low, high + 1, size=n)  # [n] in [low, high]


def _pad_mask(lengths: np.ndarray, width: int) -> np.ndarray:
  return np.arange(width)[None, :] < lengths[:, None]  # [n, width] True on real tokens


# ------------------------------------------------------------------------------------ assoc_recall

@register_task("assoc_recall")
def make_assoc_recall(*, num_pairs: int = 4, num_keys: int = 8, num_values: int = 8,
                      eval_size: int = 512) -> Task:
  """Associative recall. Kwargs: num_pairs (pairs per sequence, distinct keys), num_keys, num_values
  (= num_classes), eval_size. Input length 2 * num_pairs + 2."""
  name = "assoc_recall"
  num_pairs = check_kwarg(name, "num_pairs", num_pairs)
  num_keys = check_kwarg(name, "num_keys", num_keys)
  num_values = check_kwarg(name, "num_values", num_values, 2)
  eval_size = check_kwarg(name, "eval_size", eval_size)
  if num_pairs > num_keys:
    raise kwarg_error(name, "num_pairs", f"({num_pairs}) must be <= num_keys ({num_keys}): the keys of "
                     "a sequence are distinct")
  key0 = FIRST_TOKEN
  value0 = key0 + num_keys
  query = value0 + num_values
  seq_len = 2 * num_pairs + 2

  def generate(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    keys = rng.permuted(np.tile(np.arange(num_keys), (n, 1)), axis=1)[:, :num_pairs]  # [n, P] distinct
    values = rng.integers(0, num_values, size=(n, num_pairs))  # [n, P]
    which = rng.integers(0, num_pairs, size=n)  # [n] the queried pair
    x = np.empty((n, seq_len), np.int32)  # [n, 2P + 2]
    x[:, 0:2 * num_pairs:2] = key0 + keys
    x[:, 1:2 * num_pairs:2] = value0 + values
    x[:, -2] = query
    x[:, -1] = key0 + keys[np.arange(n), which]
    return {"inputs": x, "label": values[np.arange(n), which].astype(np.int32)}

  tokens = ("<pad>", "<bos>") + _names("k", num_keys) + _names("v", num_values) + ("?",)
  spec = {"vocab_size": query + 1, "seq_len": seq_len, "num_classes": num_values}
  task = SyntheticTask(name, "classifier", spec, generate, eval_size=eval_size, tokens=tokens)
  task.key_offset, task.value_offset, task.query_token = key0, value0, query
  return task


# ------------------------------------------------------------------------- copy / reverse / sort

def _transform_task(name: str, transform: Callable[[np.ndarray, np.ndarray], np.ndarray], length: int,
                    vocab: int, min_length: int | None, eval_size: int) -> Task:
  length = check_kwarg(name, "length", length)
  vocab = check_kwarg(name, "vocab", vocab)
  eval_size = check_kwarg(name, "eval_size", eval_size)
  min_length = length if min_length is None else check_kwarg(name, "min_length", min_length)
  if min_length > length:
    raise kwarg_error(name, "min_length", f"({min_length}) must be <= length ({length})")

  def generate(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    lengths = _lengths(rng, n, min_length, length)  # [n]
    real = _pad_mask(lengths, length)  # [n, L]
    x = np.where(real, rng.integers(FIRST_TOKEN, FIRST_TOKEN + vocab, size=(n, length)), PAD)  # [n, L]
    return {"inputs": x.astype(np.int32), "labels": transform(x, lengths).astype(np.int32)}

  spec = {"vocab_size": FIRST_TOKEN + vocab, "seq_len": length, "label_len": length}
  return SyntheticTask(name, "seq2seq", spec, generate, eval_size=eval_size,
                       tokens=("<pad>", "<bos>") + _names("s", vocab),
                       metrics=("loss", "accuracy", "seq_accuracy"))


def _reverse(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  width = x.shape[1]
  src = lengths[:, None] - 1 - np.arange(width)[None, :]  # [n, L] source position of each output
  out = np.take_along_axis(x, np.clip(src, 0, width - 1), axis=1)
  return np.where(src >= 0, out, PAD)


def _sort(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  del lengths
  last = np.iinfo(x.dtype).max
  ordered = np.sort(np.where(x == PAD, last, x), axis=1)  # [n, L] PADs sort last
  return np.where(ordered == last, PAD, ordered)


@register_task("copy")
def make_copy(*, length: int = 8, vocab: int = 8, min_length: int | None = None,
              eval_size: int = 512) -> Task:
  """Copy the source. Kwargs: length (max source length), vocab (symbols), min_length (None = fixed
  length), eval_size."""
  return _transform_task("copy", lambda x, lengths: x, length, vocab, min_length, eval_size)


@register_task("reverse")
def make_reverse(*, length: int = 8, vocab: int = 8, min_length: int | None = None,
                 eval_size: int = 512) -> Task:
  """Reverse the source (its real tokens; PADs stay at the end). Kwargs as ``copy``."""
  return _transform_task("reverse", _reverse, length, vocab, min_length, eval_size)


@register_task("sort")
def make_sort(*, length: int = 8, vocab: int = 8, min_length: int | None = None,
              eval_size: int = 512) -> Task:
  """Sort the source tokens ascending by id (duplicates kept). Kwargs as ``copy``."""
  return _transform_task("sort", _sort, length, vocab, min_length, eval_size)


# ---------------------------------------------------------------------------------- selective_copy

@register_task("selective_copy")
def make_selective_copy(*, length: int = 24, num_marked: int = 4, vocab: int = 8, noise_vocab: int = 4,
                        eval_size: int = 512) -> Task:
  """Selective copy. Kwargs: length (source length), num_marked (content tokens to copy = label
  length), vocab (content symbols), noise_vocab (noise symbols), eval_size."""
  name = "selective_copy"
  length = check_kwarg(name, "length", length)
  num_marked = check_kwarg(name, "num_marked", num_marked)
  vocab = check_kwarg(name, "vocab", vocab)
  noise_vocab = check_kwarg(name, "noise_vocab", noise_vocab)
  eval_size = check_kwarg(name, "eval_size", eval_size)
  if num_marked > length:
    raise kwarg_error(name, "length", f"({length}) is too short for num_marked={num_marked} content tokens")
  noise0 = FIRST_TOKEN + vocab

  def generate(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    x = rng.integers(noise0, noise0 + noise_vocab, size=(n, length))  # [n, L] noise
    content = rng.integers(FIRST_TOKEN, noise0, size=(n, num_marked))  # [n, M]
    order = rng.permuted(np.tile(np.arange(length), (n, 1)), axis=1)[:, :num_marked]
    positions = np.sort(order, axis=1)  # [n, M] increasing positions of the content tokens
    np.put_along_axis(x, positions, content, axis=1)
    return {"inputs": x.astype(np.int32), "labels": content.astype(np.int32)}

  spec = {"vocab_size": noise0 + noise_vocab, "seq_len": length, "label_len": num_marked}
  tokens = ("<pad>", "<bos>") + _names("s", vocab) + _names("n", noise_vocab)
  task = SyntheticTask(name, "seq2seq", spec, generate, eval_size=eval_size, tokens=tokens,
                       metrics=("loss", "accuracy", "seq_accuracy"))
  task.noise_offset = noise0
  return task
