"""The category comparison: the README's main command (wall time: experiments/categories/README.md).

    attnlab sweep --workdir=runs/categories                 # this file is the default sweep
    attnlab sweep --config=configs/sweeps/categories.py --workdir=runs/categories --shard=0/2

A union of small sub-grids, one per comparison, each changing ONE category of the task's default
model (configs/<task>.py) with everything else fixed; 3 seeds each (vmapped):

| group  | task(s)               | compares                                                          |
|--------|-----------------------|-------------------------------------------------------------------|
| score  | assoc_recall, reverse | additive, concat, dot, scaled_dot, general (softmax, soft, 4 heads) |
| source | reverse               | decoder cross-attention to the encoder vs self-attention only     |
| target | assoc_recall, digits  | soft (expectation), hard (REINFORCE), hard_st (Gumbel ST)         |
| heads  | assoc_recall, digits  | 1 head vs 4 split heads (Vaswani) vs 4 copy heads (GAT-style)      |
| graph  | karate                | graph attention (GAT additive, dot) vs uniform mean (GCN-like)    |
"""

import ml_collections

SCORES = ["additive", "concat", "dot", "scaled_dot", "general"]


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.name = "categories"
  c.seeds = (0, 1, 2)
  c.overrides = {"train": {"checkpoint_every": 0}}
  score = "model.attention.score"
  target = "model.attention.target"
  heads, mode = "model.attention.num_heads", "model.attention.head_mode"
  c.grids = [
      {"group": "score", "config": "assoc_recall", "axes": {score: SCORES}},
      {"group": "score", "config": "reverse", "axes": {score: SCORES}},
      {"group": "source", "config": "reverse", "axes": {"model.kwargs.source": ["cross", "self"]}},
      {"group": "target", "config": "assoc_recall", "axes": {target: ["soft", "hard", "hard_st"]}},
      {"group": "target", "config": "digits", "axes": {target: ["soft", "hard", "hard_st"]}},
      {"group": "heads", "config": "assoc_recall", "fixed": {heads: 1, mode: "split"}},
      {"group": "heads", "config": "assoc_recall", "fixed": {heads: 4}, "axes": {mode: ["split", "copy"]}},
      {"group": "heads", "config": "digits", "fixed": {heads: 1, mode: "split"}},
      {"group": "heads", "config": "digits", "fixed": {heads: 4}, "axes": {mode: ["split", "copy"]}},
      {"group": "graph", "config": "karate", "axes": {score: ["additive", "dot", "uniform"]}},
  ]
  return c
