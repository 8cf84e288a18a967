"""Reverse (seq2seq): an encoder-decoder maps a token sequence to its reverse (teacher forcing).

    attnlab train --config=configs/reverse.py --workdir=runs/reverse

Token accuracy and whole-sequence accuracy on a fixed test set. With cross-attention the model
solves length-16 reversal in about 150 steps (half a minute on a CPU); the default budget stops
there, so comparisons measure how fast a category learns it.
"""

from attnlab.config import base_config


def get_config(arg=None):
  c = base_config()
  c.task.name = "reverse"
  c.task.kwargs = {"length": 16, "vocab": 16, "eval_size": 512}
  c.model.name = "seq2seq"
  c.model.kwargs = {"d_model": 32, "num_layers": 1, "dropout_rate": 0.0, "source": "cross"}
  c.model.attention.update(score="scaled_dot", normalizer="softmax", target="soft", num_heads=4,
                           head_mode="split", head_merge="concat")  # fields: attnlab.AttentionSpec
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.optim.clip_norm = 1.0
  c.train.steps = 150
  c.train.batch_size = 64
  c.train.eval_every = 50
  c.train.seeds = (0, 1, 2)
  c.lock()
  return c
