"""Sort-of-CLEVR (Santoro et al. 2017), visual question answering: a question vector attends over
the regions of a CNN's feature map, after a self-attention step among the regions.

    attnlab train --config=configs/sort_of_clevr.py --workdir=runs/sort_of_clevr
    attnlab train --config=configs/sort_of_clevr.py:tiny --workdir=...   # the tests' shrunken copy
    attnlab train --config=configs/sort_of_clevr.py:sagan --workdir=...  # sagan_classifier instead
    attnlab train --config=configs/sort_of_clevr.py:hard --workdir=... \
        --config.model.kwargs.baseline=learned --config.model.kwargs.entropy_bonus=0  # REINFORCE options

32-pixel images (the paper's are 75): a 3-layer stride-2 CNN with non-overlapping 2×2 windows gives
a 4×4 map of regions, each exactly one cell of the task's grid, small enough for a 2-core CPU.
Results, the sweep over modes, targets and scores, and why batches of 128 and 7000 steps:
experiments/vision/README.md.
"""

from attnlab.config import base_config


def get_config(arg=None):
  tiny = arg == "tiny"
  c = base_config()
  c.task.name = "sort_of_clevr"
  c.task.kwargs = {"image_size": 24 if tiny else 32, "eval_size": 32 if tiny else 1000}
  c.model.name = "vqa"
  c.model.kwargs = {"mode": "self_cross", "channels": 8 if tiny else 32, "conv_layers": 2 if tiny else 3,
                     "kernel": 2, "d_model": 16 if tiny else 64, "self_layers": 1,
                     "hidden": 16 if tiny else 128, "region_embedding": True}
  c.model.attention.update(score="scaled_dot", normalizer="softmax", target="soft",
                           num_heads=1 if tiny else 4)
  if arg == "hard":  # the question's glimpse samples one region per head (REINFORCE), in cross
    c.model.kwargs.update(mode="cross", entropy_bonus=0.01, baseline="average")
    c.model.attention.target = "hard"
  if arg == "sagan":  # the SAGAN layer between conv stages (score "dot", one head: the paper's)
    c.model.name = "sagan_classifier"
    c.model.kwargs = {"channels": 32, "hidden": 128}
    c.model.attention.update(score="dot", num_heads=1)
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 0 if tiny else 100
  c.optim.clip_norm = 1.0
  c.train.steps = 6 if tiny else 7000
  c.train.batch_size = 8 if tiny else 128
  c.train.eval_every = 3 if tiny else 200  # a chunk's images are in memory: 200 x 3 seeds x 128
  c.train.eval_batch_size = 1000
  c.train.seeds = (0,) if tiny else (0, 1, 2)
  c.lock()
  return c
