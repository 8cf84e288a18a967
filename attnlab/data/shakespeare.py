"""``shakespeare``: character-level language modelling on a text file (tiny Shakespeare, Karpathy 2015).

The vocabulary is the file's distinct characters, sorted by code point (token = 2 + rank; 0 PAD and
1 BOS are never used in the data). Fixed split: the first 90 % of the characters are train, the last
10 % are held out and cut in halves: the first half is val, the second test. Train batches are random
windows of ``seq_len + 1`` characters (inputs = window[:-1], labels = window[1:]) drawn per
(seed, step); val/test are ``eval_size`` non-overlapping windows spread evenly over their half
(the same for every seed).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from attnlab.data import paths
from attnlab.data.base import FIRST_TOKEN, Task, check_kwarg, kwarg_error, register_task, rng_for

TRAIN_FRACTION = 0.9


class TextTask(Task):
  """Next-token prediction over fixed token streams per split."""

  def __init__(self, name: str, streams: dict[str, np.ndarray], seq_len: int, eval_size: int,
               tokens: tuple[str, ...]):
    spec = {"vocab_size": len(tokens), "seq_len": seq_len}
    super().__init__(name, "lm", spec, eval_size=eval_size, tokens=tokens)
    self.streams, self.seq_len = streams, seq_len

  def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    text = self.streams["train"]
    starts = rng_for(seed, "train", step).integers(0, len(text) - self.seq_len, size=batch_size)  # [B]
    return self._windows(text, starts)

  def make_eval_set(self, split: str) -> dict[str, np.ndarray]:
    text = self.streams[split]
    count = (len(text) - 1) // self.seq_len  # non-overlapping windows that fit (with their labels)
    chosen = np.linspace(0, count - 1, self.eval_size).round().astype(np.int64)  # [eval_size] distinct
    return self._windows(text, chosen * self.seq_len)

  def _windows(self, text: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]  # [B, L + 1]
    window = text[idx]
    return {"inputs": window[:, :-1], "labels": window[:, 1:]}


@register_task("shakespeare")
def make_shakespeare(*, path: str | None = None, seq_len: int = 64, eval_size: int = 256) -> Task:
  """Char-level LM. Kwargs: path (a UTF-8 text file; default: the data directory's
  tinyshakespeare/input.txt, else the bundled copy), seq_len, eval_size (windows in val and in test
  each)."""
  name = "shakespeare"
  seq_len = check_kwarg(name, "seq_len", seq_len)
  eval_size = check_kwarg(name, "eval_size", eval_size)
  file = paths.shakespeare_path() if path is None else pathlib.Path(os.fspath(path))
  if not file.is_file():
    raise FileNotFoundError(f"task {name!r}: text file {str(file)!r} (kwarg path) does not exist")
  try:
    text = file.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"task {name!r}: {str(file)!r} is not UTF-8 text ({e})") from None
  codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)  # [T] code points
  chars, ids = np.unique(codes, return_inverse=True)
  ids = (ids + FIRST_TOKEN).astype(np.int32)  # [T]
  cut = int(len(ids) * TRAIN_FRACTION)
  half = cut + (len(ids) - cut) // 2
  streams = {"train": ids[:cut], "val": ids[cut:half], "test": ids[half:]}
  fits = min((len(s) - 1) // seq_len for s in (streams["val"], streams["test"]))
  if len(streams["train"]) <= seq_len or fits < 1:
    raise ValueError(f"task {name!r}: {str(file)!r} has {len(ids)} characters, too few for kwarg "
                     f"seq_len={seq_len} (each 5 % held-out half needs a window of seq_len + 1)")
  if eval_size > fits:
    raise kwarg_error(name, "eval_size", f"({eval_size}) exceeds the {fits} non-overlapping windows of "
                     f"seq_len={seq_len} in the val/test halves of {str(file)!r}")
  tokens = ("<pad>", "<bos>") + tuple(chr(c) for c in chars)
  return TextTask(name, streams, seq_len, eval_size, tokens)
