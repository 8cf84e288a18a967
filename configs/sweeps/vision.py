"""The vision sweep: Sort-of-CLEVR questions answered with and without attention over image regions
(results, plots and findings: experiments/vision/README.md).

    attnlab sweep --config=configs/sweeps/vision.py --workdir=runs/vision

Every run is configs/sort_of_clevr.py (model ``vqa``, 3 seeds vmapped) with one change; the metrics
``relational_accuracy`` and ``nonrelational_accuracy`` score the two kinds of question apart:

| group    | compares                                                                         |
|----------|----------------------------------------------------------------------------------|
| mode     | no attention (CNN + MLP, Santoro et al.'s baseline) vs cross-attention only (the  |
|          | question attends over the regions) vs self- then cross-attention (soft, scaled_dot) |
| target   | cross: soft vs hard (each head's glimpse samples one region, REINFORCE)          |
| score    | cross: scaled_dot vs additive                                                    |

target and score use the cross model (one attention layer, so the category is the question's
glimpse alone); their soft / scaled_dot run is mode's cross run, whose lines they reuse.

``:tiny`` is a shrunken copy for the tests (2 runs, 6 steps, 24-pixel images).
"""

import ml_collections


def get_config(arg=None):
  tiny = arg == "tiny"
  c = ml_collections.ConfigDict()
  c.name = "vision-tiny" if tiny else "vision"
  c.seeds = (0, 1) if tiny else (0, 1, 2)
  c.overrides = {"train": {"checkpoint_every": 0}}
  config = "configs/sort_of_clevr.py:tiny" if tiny else "sort_of_clevr"
  mode = "model.kwargs.mode"
  c.grids = [
      {"group": "mode", "config": config, "axes": {mode: ["mlp", "cross", "self_cross"]}},
      {"group": "target", "config": config, "fixed": {mode: "cross"},
       "axes": {"model.attention.target": ["soft", "hard"]}},
      {"group": "score", "config": config, "fixed": {mode: "cross"},
       "axes": {"model.attention.score": ["scaled_dot", "additive"]}},
  ]
  if tiny:
    c.grids = [{"group": "mode", "config": config, "axes": {mode: ["mlp", "self_cross"]}}]
  return c
