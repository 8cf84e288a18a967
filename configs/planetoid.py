"""Planetoid citation graphs (node classifier) with a 2-layer GAT, GAT's recipe (Veličković et al. 2018).

    attnlab train --config=configs/planetoid.py --workdir=runs/cora                    # cora
    attnlab train --config=configs/planetoid.py:citeseer --config.data_dir=DIR --workdir=runs/citeseer

``data_dir`` holds the ind.<dataset>.* files (default $ATTNLAB_DATA_DIR/planetoid; ATTNLAB_DATA_DIR
defaults to the ``shared/data`` directory next to the repository). 8 heads × 8 hidden units, ELU,
dropout 0.6 on inputs and attention, L2 5e-4, Adam 0.005, early stopping with patience 100 on val
loss and accuracy; 10 seeds in one vmapped program.
"""

import os
import pathlib

from attnlab.config import REPO_ROOT, base_config

DATA_DIR = pathlib.Path(os.environ.get("ATTNLAB_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def get_config(arg=None):
  c = base_config()
  c.dataset = arg or "cora"
  c.data_dir = str(DATA_DIR / "planetoid")
  c.task.name = "planetoid"
  c.task.knobs = {"dataset": c.get_ref("dataset"), "data_dir": c.get_ref("data_dir"),
                  "normalize_features": True}
  c.model.name = "gat"
  c.model.options = {"hidden": 8, "num_heads": 8, "score": "additive", "dropout_rate": 0.6}
  c.optim.name = "adam"
  c.optim.learning_rate = 5e-3
  c.optim.weight_decay = 5e-4
  c.train.steps = 1000
  c.train.eval_every = 1
  c.train.checkpoint_every = 0
  c.train.early_stopping.patience = 100
  c.train.early_stopping.metrics = "loss,accuracy"
  c.train.seeds = tuple(range(10))
  c.lock()
  return c
