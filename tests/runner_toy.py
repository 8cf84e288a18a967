"""A tiny throwaway task + model for the runner tests (loaded as a config file, so that subprocesses
running ``attnlab`` register them too). Not part of the library.

Task ``runner_toy``: sequences x [B, 6, 3] ~ N(0, 1); label = 1 if the first feature sums to > 0.
Kwargs ``nan_seed``, ``nan_step``: that seed's training inputs are NaN from that step on (a seed
whose loss diverges, for the fault tests).
Model ``runner_toy_model``: Linear -> attnlab MultiHeadAttention (self) -> mean pool -> dropout -> Linear.
"""

import numpy as np
from flax import nnx

from attnlab import models, modules, registry
from attnlab.config import base_config
from attnlab.data.base import Task, rng_for


class ToyTask(Task):
  nan_seed, nan_step = -1, 0

  def batch(self, split, step, batch_size, seed=0):
    self.check_split(split)
    r = rng_for(seed if split == "train" else 0, split, step)
    x = r.normal(size=(batch_size, 6, 3)).astype(np.float32)  # [B, L, F]
    label = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    if split == "train" and seed == self.nan_seed and step >= self.nan_step:
      x[:] = np.nan
    return {"inputs": x, "label": label}


def make_toy(eval_size=64, nan_seed=-1, nan_step=0):
  task = ToyTask("runner_toy", "classifier", {"input_dim": 3, "num_classes": 2, "seq_len": 6},
                 eval_size=eval_size)
  task.nan_seed, task.nan_step = nan_seed, nan_step
  return task


class ToyModel(nnx.Module):
  family = "classifier"

  def __init__(self, *, spec, rngs, attention, d_model=8, dropout_rate=0.2):
    self.embed = nnx.Linear(spec["input_dim"], d_model, rngs=rngs)
    self.attn = modules.MultiHeadAttention(attention.num_heads, d_model, attention=attention, rngs=rngs)
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)
    self.out = nnx.Linear(d_model, spec["num_classes"], rngs=rngs)

  def __call__(self, batch, *, train):
    h = self.embed(batch["inputs"])  # [B, L, D]
    h = self.attn(h, deterministic=True, sow_weights=models.sow_enabled()).mean(1)  # [B, D]
    return self.out(self.drop(h, deterministic=not train)), {}


if "runner_toy" not in registry.names("task"):
  registry.register("task", "runner_toy", make_toy)
if "runner_toy_model" not in registry.names("model"):
  models.register_model("runner_toy_model")(ToyModel)


def get_config(arg=None):
  c = base_config()
  c.task.name = "runner_toy"
  c.task.kwargs = {"eval_size": 64}
  c.model.name = "runner_toy_model"
  c.model.kwargs = {"d_model": 8, "dropout_rate": 0.2}
  c.model.attention.update(num_heads=2, score="scaled_dot")
  c.optim.learning_rate = 0.02
  c.train.steps = int(arg) if arg else 24
  c.train.batch_size = 16
  c.train.eval_every = 8
  c.train.checkpoint_every = 8
  c.train.seeds = (0, 1)
  c.lock()
  return c
