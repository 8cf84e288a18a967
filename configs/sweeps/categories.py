"""The category comparison: the README's main command (results and wall time: experiments/categories/).

    attnlab sweep --workdir=runs/categories                  # this file is the default sweep
    attnlab sweep --config=configs/sweeps/categories.py:full --workdir=runs/categories_full

A union of small sub-grids, one per comparison ("block"), each changing ONE category of the task's
default model (configs/<task>.py: 4 split heads, scaled-dot score, softmax, soft target) with
everything else fixed. Every run trains its seeds × learning-rate grid as one vmapped program; each
variant's rate is chosen on validation, test metrics are reported at that rate, and every seed
trains to its plateau (a budget the slowest variant needs, and early stopping on val loss and
accuracy, GAT's rule). Learning speed: steps to reach 95 % val accuracy and the area under the val
curve (attnlab.tuning).

| block      | task          | compares                                                             |
|------------|---------------|----------------------------------------------------------------------|
| score      | assoc_recall, reverse | additive, concat, dot, scaled_dot, general                   |
| normalizer | assoc_recall  | softmax, sparsemax, entmax15, sigmoid (b = -log n)                   |
| scale      | assoc_recall  | dot vs scaled_dot with one head of D_k = 256 (qkv_features=256)      |
| source     | reverse       | decoder cross-attention to the encoder vs self-attention only        |
| target     | assoc_recall  | soft (expectation), hard (REINFORCE), hard_st (Gumbel straight-through) |
| heads      | assoc_recall  | 1 head vs 4 split heads (Vaswani) vs 4 copy heads (GAT-style)         |

No graph block: karate's 18 test nodes cannot separate the scores, and Cora's runs last until
GAT's early stopping ends them (about 1000 epochs, 25-50 s per score for ten seeds at one rate), so
three scores × a three-rate grid would take 5-7 more minutes than the 15 this command has. Graph
attention scores are compared on Cora at GAT's published recipe in their own sweep
(configs/sweeps/cora_scores.py, results in experiments/cora_gat/).

``arg`` "full": the larger protocol of experiments/categories/ (20 seeds and a 5-rate grid, 3e-4 to
3e-2, over the same budgets).
"""

import ml_collections

SCORES = ["additive", "concat", "dot", "scaled_dot", "general"]
NORMALIZERS = ["softmax", "sparsemax", "entmax15", "sigmoid"]
TARGETS = ["soft", "hard", "hard_st"]
PROTOCOLS = {  # seeds, learning-rate grid, step budget per task
    None: (tuple(range(10)), (1e-3, 3e-3, 1e-2), {"assoc_recall": 1500, "reverse": 800}),
    "full": (tuple(range(20)), (3e-4, 1e-3, 3e-3, 1e-2, 3e-2), {"assoc_recall": 1500, "reverse": 800}),
}


def get_config(arg=None):
  if arg not in PROTOCOLS:
    raise ValueError(f"categories sweep: unknown protocol {arg!r}; choices: None (default), 'full'")
  seeds, rates, steps = PROTOCOLS[arg]
  c = ml_collections.ConfigDict()
  c.name = "categories" if arg is None else f"categories_{arg}"
  c.seeds = seeds
  c.overrides = {
      "optim": {"learning_rates": rates, "select_metric": "accuracy"},
      "train": {"checkpoint_every": 0, "batch_size": 16, "eval_every": 100, "reach_value": 0.95,
                "early_stopping": {"patience": 5, "metrics": "loss,accuracy"}},
  }
  a = "model.attention."
  ar = {"train.steps": steps["assoc_recall"]}
  rev = {"train.steps": steps["reverse"]}
  c.grids = [
      {"group": "score", "config": "assoc_recall", "fixed": ar, "axes": {a + "score": SCORES}},
      {"group": "score", "config": "reverse", "fixed": rev, "axes": {a + "score": SCORES}},
      {"group": "normalizer", "config": "assoc_recall", "fixed": ar,
       "axes": {a + "normalizer": NORMALIZERS}},
      {"group": "scale", "config": "assoc_recall",
       "fixed": {**ar, a + "num_heads": 1, "model.kwargs.qkv_features": 256},
       "axes": {a + "score": ["dot", "scaled_dot"]}},
      {"group": "source", "config": "reverse", "fixed": rev,
       "axes": {"model.kwargs.source": ["cross", "self"]}},
      {"group": "target", "config": "assoc_recall", "fixed": ar, "axes": {a + "target": TARGETS}},
      {"group": "heads", "config": "assoc_recall", "fixed": {**ar, a + "num_heads": 1}},
      {"group": "heads", "config": "assoc_recall", "fixed": {**ar, a + "num_heads": 4},
       "axes": {a + "head_mode": ["split", "copy"]}},
  ]
  return c
