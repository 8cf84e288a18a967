"""Graph-attention scores on a real graph: GAT's Cora recipe (configs/cora_gat.py) with one score changed.

    attnlab sweep --config=configs/sweeps/cora_scores.py --workdir=runs/cora_scores

The same two-layer GraphAttention network, dropout, optimiser and early stopping for every run;
only the edge score changes (attnlab.kernels.graph): additive (GAT), gatv2, dot, scaled_dot,
general, and uniform (softmax of a constant = the mean over each node's neighbourhood with its self
loop, GCN-like aggregation without GCN's symmetric normalisation). 10 seeds each, vmapped.
``--config.overrides.dataset`` (and ``--config.overrides.data_dir=DIR``, the Planetoid files' directory
when not the default, configs/cora_gat.py) reach every run's config.
"""

import ml_collections
from ml_collections import config_dict

from attnlab import config as config_lib

SCORES = ["additive", "gatv2", "dot", "scaled_dot", "general", "uniform"]


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.name = "cora_scores"
  c.seeds = tuple(range(10))
  base = config_lib.load_file("configs/cora_gat.py")
  c.overrides = {"data_dir": config_dict.placeholder(str), "dataset": arg or base.dataset}
  c.grids = [{"group": "graph_score", "config": "cora_gat", "axes": {"model.attention.score": SCORES}}]
  return c
