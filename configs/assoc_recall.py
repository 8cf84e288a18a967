"""Associative recall (classifier): after key-value pairs, a query key; predict its value.

    attnlab train --config=configs/assoc_recall.py --workdir=runs/assoc_recall

A two-layer attention encoder learns 2 pairs in a few hundred steps on a CPU (under a minute); the
default budget (400 steps) stops mid-transition, so the comparison measures how fast a category learns
the retrieval (4 pairs need far more steps: the accuracy sits at the ~40% "guess a value present"
plateau for over 800 steps). The category comparison changes the attention spec, e.g.
--config.model.attention.score=additive, .target=hard, .num_heads=1, or a member's option such as
--config.model.attention.score_kwargs.hidden=16 (additive's width).
"""

from ml_collections import config_dict

from attnlab.config import base_config


def get_config(arg=None):
  c = base_config()
  c.task.name = "assoc_recall"
  c.task.kwargs = {"num_pairs": 2, "num_keys": 8, "num_values": 8, "eval_size": 512}
  c.model.name = "encoder"
  # qkv_features: the attention width (None: d_model); each split head has D_k = qkv_features / H
  c.model.kwargs = {"d_model": 32, "num_layers": 2, "dropout_rate": 0.0, "pooling": "mean",
                     "qkv_features": config_dict.placeholder(int)}
  c.model.attention.update(score="scaled_dot", normalizer="softmax", target="soft", num_heads=4,
                           head_mode="split", head_merge="concat")  # fields: attnlab.AttentionSpec
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.optim.clip_norm = 1.0
  c.train.steps = 400
  c.train.batch_size = 64
  c.train.eval_every = 100
  c.train.seeds = (0, 1, 2)
  c.lock()
  return c
