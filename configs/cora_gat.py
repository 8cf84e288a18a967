"""GAT on the Planetoid citation graphs: the paper's recipe (Veličković et al. 2018, Table 3: Cora
83.0 ± 0.7 %).

    attnlab train --config=configs/cora_gat.py --workdir=runs/cora_gat
    attnlab download planetoid citeseer   # once: Cora ships with attnlab, the others download verified
    attnlab train --config=configs/cora_gat.py:citeseer --workdir=runs/citeseer_gat

``dataset`` is cora, citeseer or pubmed (the string after the ``:``, or ``--config.dataset``).
``data_dir`` is the directory of the files ind.<dataset>.{x,y,tx,ty,allx,ally,graph,test.index};
unset, they come from $ATTNLAB_DATA_DIR/planetoid (where ``attnlab download`` puts them), else
from the copy of Cora shipped with attnlab (attnlab.data.paths). PubMed's paper setting differs
(8 output heads, lr 0.01, L2 1e-3): set those with --config.model.kwargs.output_heads=8 etc.

The recipe: 2 GraphAttention layers, 8 heads × 8 hidden units concatenated, ELU, output layer with 1
head (mean); dropout 0.6 on each layer's input, on the attention coefficients and on the projected
features used as values (GAT's reference code, ``value_dropout``); L2 5e-4 on every parameter
(biases included) added to the gradient, Adam lr 0.005; row-normalised features served sparse
(O(nnz) input projection and dropout); Glorot init. Each split is served as its 2-hop computation
subgraph (``subgraph_hops=2``: only the nodes and edges each layer needs for the split's outputs,
attnlab.data.graph), so the losses, gradients and metrics are the whole graph's at a fraction of the
cost; ``--config.task.kwargs.subgraph_hops=0`` runs on the whole graph. Results and wall times:
experiments/cora_gat/README.md. Early stopping as GAT's execute_cora.py: validation (deterministic)
after every epoch; a seed's patience counter (100) resets when val accuracy >= its best or val loss
(cross-entropy) <= its best; the test accuracy reported is that of the last epoch at which both
were. Ten seeds train together in one vmapped program; result.json holds each seed's test accuracy,
mean and std.
"""

from ml_collections import config_dict

from attnlab.config import base_config


def get_config(arg=None):
  c = base_config()
  c.dataset = arg or "cora"
  c.data_dir = config_dict.placeholder(str)  # None: attnlab.data.paths decides
  c.task.name = "planetoid"
  c.task.kwargs = {"dataset": c.get_ref("dataset"), "data_dir": c.get_ref("data_dir"),
                  "normalize_features": True, "sparse_features": True, "subgraph_hops": 2}
  c.model.name = "gat"
  c.model.kwargs = {"hidden": 8, "output_heads": 1, "dropout_rate": 0.6, "value_dropout": 0.6}
  c.model.attention.update(graph=True, score="additive", num_heads=8, head_mode="copy", dropout=0.6)
  c.optim.name = "adam"
  c.optim.learning_rate = 5e-3
  c.optim.weight_decay = 5e-4
  c.train.steps = 100_000  # an upper bound: every seed stops early (GAT's nb_epochs)
  c.train.eval_every = 1
  c.train.checkpoint_every = 0
  c.train.attention_maps = False
  c.train.early_stopping.patience = 100
  c.train.early_stopping.metrics = "loss,accuracy"
  c.train.seeds = tuple(range(10))
  c.lock()
  return c
