"""Digits (classifier): the 8x8 scikit-learn digits as a sequence of 8 pixel rows (features).

    attnlab train --config=configs/digits.py --workdir=runs/digits

Needs the data extra (scikit-learn). Test accuracy in the high 90s within a minute on a CPU.
"""

from attnlab.config import base_config


def get_config(arg=None):
  c = base_config()
  c.task.name = "digits"
  c.task.kwargs = {"layout": "rows", "eval_size": 360}
  c.model.name = "encoder"
  c.model.kwargs = {"d_model": 32, "num_layers": 1, "dropout_rate": 0.1}  # residual dropout
  c.model.attention.update(score="scaled_dot", normalizer="softmax", target="soft", num_heads=4,
                           head_mode="split", head_merge="concat", dropout=0.1)  # on the weights
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 50
  c.optim.clip_norm = 1.0
  c.train.steps = 500
  c.train.batch_size = 64
  c.train.eval_every = 100
  c.train.seeds = (0, 1, 2)
  c.lock()
  return c
