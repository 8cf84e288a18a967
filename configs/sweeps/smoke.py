"""A tiny sweep for a first look and for the tests: 2 scores × 2 seeds on associative recall, plus
graph attention vs uniform aggregation on the karate club (4 runs × 2 seeds, about a minute);
``:tiny`` is the score grid alone, shrunk (2 runs × 2 seeds).

    attnlab sweep --config=configs/sweeps/smoke.py --workdir=runs/smoke
    attnlab sweep --config=configs/sweeps/smoke.py:tiny --workdir=...     # the tests' shrunken copy
"""

import ml_collections


def get_config(arg=None):
  tiny = arg == "tiny"
  c = ml_collections.ConfigDict()
  c.name = "smoke-tiny" if tiny else "smoke"
  c.seeds = (0, 1)
  c.overrides = {"train": {"steps": 20 if tiny else 150, "eval_every": 10 if tiny else 50,
                           "checkpoint_every": 0}}
  if tiny:
    c.overrides.task = {"kwargs": {"eval_size": 64}}
    c.overrides.model = {"kwargs": {"d_model": 16, "num_layers": 1}}
  c.grids = [
      {"group": "score", "config": "assoc_recall", "axes": {"model.attention.score": ["dot", "additive"]}},
      {"group": "graph", "config": "karate", "axes": {"model.attention.score": ["additive", "uniform"]}},
  ]
  if tiny:  # 2 runs (the tests kill and resume it); the shrunken overrides fit assoc_recall only
    c.grids = c.grids[:1]
  return c
