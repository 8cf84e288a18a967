"""``karate``: Zachary's karate club (networkx), node classification of the two factions.

34 members, 78 friendships; the label is the club each member joined after the split ("Mr. Hi" = 0,
"Officer" = 1; 17 each). Features are the identity (one-hot node ids, [34, 34]): the graph structure
is all there is to learn from. Fixed split (independent of the training seed): per class
``train_per_class`` nodes for train and ``val_per_class`` for val, drawn with a fixed seed; all other
nodes are test (default 4 + 4 per class -> 8 train, 8 val, 18 test). Needs the ``data`` extra.
"""

from __future__ import annotations

import numpy as np

from attnlab.data.base import check_kwarg, import_extra, kwarg_error, register_task
from attnlab.data.graph import Graph, GraphTask, undirected_edges

CLUBS = ("Mr. Hi", "Officer")
SPLIT_SEED = 0


@register_task("karate")
def make_karate(*, train_per_class: int = 4, val_per_class: int = 4) -> GraphTask:
  """Karate club. Kwargs: train_per_class, val_per_class (labelled nodes per faction)."""
  name = "karate"
  train_per_class = check_kwarg(name, "train_per_class", train_per_class)
  val_per_class = check_kwarg(name, "val_per_class", val_per_class)
  nx = import_extra("networkx", name)
  g = nx.karate_club_graph()
  nodes = sorted(g.nodes)
  labels = np.array([CLUBS.index(g.nodes[v]["club"]) for v in nodes], np.int32)  # [N]
  smallest = int(np.bincount(labels).min())
  if train_per_class + val_per_class >= smallest:
    raise kwarg_error(name, "train_per_class", f"+ val_per_class ({train_per_class} + {val_per_class}) "
                     f"must be < {smallest}, the smallest faction, to leave test nodes")
  rng = np.random.default_rng(SPLIT_SEED)
  train, val = [], []
  for c in range(len(CLUBS)):
    members = rng.permutation(np.flatnonzero(labels == c))
    train.append(members[:train_per_class])
    val.append(members[train_per_class:train_per_class + val_per_class])
  train_index, val_index = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
  test_index = np.setdiff1d(np.arange(len(nodes)), np.concatenate([train_index, val_index]))
  graph = Graph(features=np.eye(len(nodes), dtype=np.float32), labels=labels,
                edges=undirected_edges(np.array(list(g.edges), np.int64), len(nodes)),
                train_index=train_index, val_index=val_index, test_index=test_index,
                num_classes=len(CLUBS))
  return GraphTask(name, graph)
