"""Graphs for node classification: the ``Graph`` record and the task that serves it.

A node-classifier batch is the whole graph: features [N, F], edges [2, E] (row 0 source, row 1
target; both directions of every undirected edge, no self loops, no duplicates; models add self
loops if they want them), labels [N], and ``mask`` [N] = the nodes of the requested split. Batches
are the same for every seed and step (the runner places one copy on the devices).

With ``sparse_features=True`` the features come as their stored entries instead of ``features``:
``feature_index`` int32 [nnz, 2] (node, feature) pairs in row-major order and ``feature_values``
float32 [nnz] (bag-of-words graphs such as Cora are ~1 % dense; the ``gat`` model takes either),
plus ``feature_lists/*``, the same entries as a ``kernels.segments.Incidence`` (out = node,
in = feature). Every batch also holds ``edge_lists/*``: the incidence of the edges with one self
loop per node (``kernels.edge_incidence``), the graph attention layers' scatter-free fast path.
Read either back with ``kernels.segments.from_arrays(batch, "edge_lists")``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attnlab.data.base import Task
from attnlab.kernels import graph as graph_kernels
from attnlab.kernels import segments


@dataclasses.dataclass(frozen=True)
class Graph:
  """A node-labelled graph with a fixed split.

  Attributes:
    features: float32 [N, F].
    labels: int32 [N] in [0, num_classes).
    edges: int32 [2, E], both directions, no self loops, deduplicated, sorted by (source, target).
    train_index, val_index, test_index: int64 node indices of the splits.
    num_classes: number of classes.
  """
  features: np.ndarray
  labels: np.ndarray
  edges: np.ndarray
  train_index: np.ndarray
  val_index: np.ndarray
  test_index: np.ndarray
  num_classes: int

  @property
  def num_nodes(self) -> int:
    return self.features.shape[0]

  def split_index(self, split: str) -> np.ndarray:
    return {"train": self.train_index, "val": self.val_index, "test": self.test_index}[split]


def undirected_edges(pairs: np.ndarray, num_nodes: int) -> np.ndarray:
  """[2, E] int32 edges from node pairs [P, 2]: both directions, self loops and duplicates removed,
  sorted by (source, target)."""
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)  # [P, 2]
  if len(pairs) and (pairs.min() < 0 or pairs.max() >= num_nodes):
    raise ValueError(f"edge endpoints must be node indices in [0, {num_nodes}), got "
                     f"[{pairs.min()}, {pairs.max()}]")
  both = np.concatenate([pairs, pairs[:, ::-1]])  # [2P, 2]
  both = both[both[:, 0] != both[:, 1]]
  keys = np.unique(both[:, 0] * num_nodes + both[:, 1])  # sorted, deduplicated
  return np.stack([keys // num_nodes, keys % num_nodes]).astype(np.int32)  # [2, E]


def row_normalize(features: np.ndarray) -> np.ndarray:
  """Rows scaled to sum 1 (all-zero rows stay zero), as the GCN/GAT loaders do."""
  sums = features.sum(axis=1, keepdims=True)  # [N, 1]
  return np.where(sums > 0, features / np.where(sums > 0, sums, 1), 0).astype(np.float32)


class GraphTask(Task):
  """Node classification on one fixed graph; every batch is the whole graph with the split's mask."""

  def __init__(self, name: str, graph: Graph, *, sparse_features: bool = False):
    spec = {"num_features": graph.features.shape[1], "num_classes": graph.num_classes,
            "num_nodes": graph.num_nodes}
    super().__init__(name, "node_classifier", spec)
    self.graph = graph
    if sparse_features:
      rows, cols = np.nonzero(graph.features)  # row-major order
      self._features = {"feature_index": np.stack([rows, cols], 1).astype(np.int32),  # [nnz, 2]
                        "feature_values": graph.features[rows, cols].astype(np.float32),  # [nnz]
                        **segments.to_arrays(segments.incidence(rows, cols, *graph.features.shape),
                                             "feature_lists")}
    else:
      self._features = {"features": graph.features}  # [N, F]
    self._features.update(segments.to_arrays(
        graph_kernels.edge_incidence(graph.edges, graph.num_nodes), "edge_lists"))

  def _whole(self, split: str) -> dict[str, np.ndarray]:
    mask = np.zeros(self.graph.num_nodes, bool)  # [N]
    mask[self.graph.split_index(split)] = True
    return {**self._features, "edges": self.graph.edges, "labels": self.graph.labels, "mask": mask}

  def batch(self, split: str, step: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The whole graph with ``mask`` = the nodes of ``split`` (step, batch_size, seed are ignored)."""
    del step, batch_size, seed
    self.check_split(split)
    return self._whole(split)

  def make_eval_set(self, split: str) -> dict[str, np.ndarray]:
    return self._whole(split)

  def num_batches(self, split: str, batch_size: int) -> int:
    self.check_split(split)
    return 1
