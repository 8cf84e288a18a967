"""Zachary's karate club (node classifier): which faction each member joins, from 4 labels per faction.

    attnlab train --config=configs/karate.py --workdir=runs/karate

A two-layer graph-attention network on the whole graph; seconds on a CPU. Compare with uniform
aggregation: --config.model.attention.score=uniform.
"""

from attnlab.config import base_config


def get_config(arg=None):
  c = base_config()
  c.task.name = "karate"
  c.task.kwargs = {"train_per_class": 4, "val_per_class": 4}
  c.model.name = "gat"
  c.model.kwargs = {"hidden": 8, "dropout_rate": 0.2}
  c.model.attention.update(graph=True, score="additive", num_heads=4, head_mode="copy", dropout=0.2)
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-2
  c.optim.weight_decay = 5e-4
  c.train.steps = 200
  c.train.eval_every = 10
  c.train.seeds = (0, 1, 2)
  c.lock()
  return c
