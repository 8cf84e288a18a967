"""ListOps (classifier): evaluate nested MAX/MIN/MED/SUM_MOD lists of digits (Nangia & Bowman 2018).

    attnlab train --config=configs/listops.py --workdir=runs/listops

A hard task for small models: a few minutes on a CPU give well above chance, not a solved task.
"""

from attnlab.config import base_config


def get_config(arg=None):
  c = base_config()
  c.task.name = "listops"
  c.task.kwargs = {"max_depth": 3, "max_args": 5, "max_length": 40, "eval_size": 512}
  c.model.name = "encoder"
  c.model.kwargs = {"d_model": 64, "num_layers": 2, "dropout_rate": 0.0}
  c.model.attention.update(score="scaled_dot", normalizer="softmax", target="soft", num_heads=4,
                           head_mode="split", head_merge="concat")  # fields: attnlab.AttentionSpec
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.optim.clip_norm = 1.0
  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.eval_every = 250
  c.train.seeds = (0, 1, 2)
  c.lock()
  return c
