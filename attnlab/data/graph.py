"""Graphs for node classification: the ``Graph`` record and the task that serves it.

A node-classifier batch is ``{"graph": GraphBatch, "labels": [N], "mask": [N]}``
(attnlab.graph_batch): the graph's features (dense [N, F], or with ``sparse_features=True`` a
``SparseMatrix`` of the stored entries: bag-of-words graphs such as Cora are ~1 % dense), its edges
[2, E] (sender, receiver; both directions of every undirected edge, no self loops, no duplicates)
and the incidence the attention layers run on (the edges plus one self loop per node); ``mask`` =
the nodes of the requested split. Batches are the same for every seed and step (the runner places
one copy on the devices).

``subgraph_hops=k`` (> 0) serves each split as its k-hop *computation subgraph* instead
(``computation_subgraph``; DGL's message-flow graphs, PyTorch Geometric's ``NeighborLoader`` with
all neighbours): the split's nodes first, then every node within 1, ..., k hops upstream of them,
and one incidence per message-passing layer, whose receivers are only the nodes the next layer
reads (layer l of k: the nodes within k − 1 − l hops, a prefix of the node order) and whose senders
are the rows the layer before produced. A model of k such layers then computes exactly its
full-graph outputs at the split's nodes, as its first rows (the loss reads labels and mask for
those), so the loss, its gradients and the metrics are those of the whole graph while the rest of
it costs nothing. ``spec["subgraph_hops"]`` = k tells the model (``gat`` refuses fewer hops than
its layers).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attnlab import graph_batch
from attnlab.data.base import Task, kwarg_error


@dataclasses.dataclass(frozen=True)
class Graph:
  """A node-labelled graph with a fixed split.

  Attributes:
    features: float32 [N, F].
    labels: int32 [N] in [0, num_classes).
    edges: int32 [2, E] (sender, receiver), both directions, no self loops, deduplicated, sorted.
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
  sorted by (sender, receiver)."""
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


def computation_subgraph(edges: np.ndarray, num_nodes: int, roots: np.ndarray,
                         hops: int) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
  """The ``hops``-hop computation subgraph of the nodes ``roots``: (nodes, sizes, layer_edges).

  ``nodes`` int64 [n'] are the roots and every node with a path of at most ``hops`` edges to
  one, ordered by that distance, then by id: the nodes within d hops are the first ``sizes[d]``
  (d = 0..hops; ``sizes[0]`` = the roots, ``sizes[hops]`` = n'). ``layer_edges[l]`` int32
  [2, E_l] (sender, receiver), relabelled to positions in ``nodes``, are the edges of [2, E] into
  the nodes within ``hops - 1 - l`` hops: the l-th of ``hops`` rounds of message passing needs only
  those receivers' outputs, from inputs of the nodes within one hop more, and the last round gives
  every root the value it gets on the whole graph.
  """
  if hops < 1:
    raise ValueError(f"computation_subgraph: hops must be a positive int, got {hops}")
  dist = np.full(num_nodes, hops + 1)  # [N] hops to the nearest root (hops + 1: farther)
  dist[roots] = 0
  for d in range(1, hops + 1):
    senders = edges[0][dist[edges[1]] == d - 1]  # of edges into the nodes d - 1 hops away
    dist[senders] = np.minimum(dist[senders], d)
  nodes = np.lexsort((np.arange(num_nodes), dist))[:int(np.sum(dist <= hops))]  # by (dist, id)
  position = np.empty(num_nodes, np.int64)
  position[nodes] = np.arange(len(nodes))
  sizes = [int(np.sum(dist <= d)) for d in range(hops + 1)]
  layer_edges = []
  for layer in range(hops):
    e = edges[:, dist[edges[1]] <= hops - 1 - layer]
    layer_edges.append(position[e].astype(np.int32))
  return nodes, sizes, layer_edges


class GraphTask(Task):
  """Node classification on one fixed graph; a batch is the whole graph with the split's mask, or
  with ``subgraph_hops`` > 0 the split's computation subgraph (see the module docstring)."""

  def __init__(self, name: str, graph: Graph, *, sparse_features: bool = False,
               subgraph_hops: int = 0):
    if not isinstance(subgraph_hops, int) or isinstance(subgraph_hops, bool) or subgraph_hops < 0:
      raise kwarg_error(name, "subgraph_hops", f"must be an int >= 0 (0 = the whole graph), got "
                       f"{subgraph_hops!r}")
    spec = {"num_features": graph.features.shape[1], "num_classes": graph.num_classes,
            "num_nodes": graph.num_nodes, "subgraph_hops": subgraph_hops}
    super().__init__(name, "node_classifier", spec)
    self.graph, self.sparse_features, self.subgraph_hops = graph, sparse_features, subgraph_hops
    self._parts: dict[str, tuple[np.ndarray, dict]] = {}

  def _part(self, split: str) -> tuple[np.ndarray, dict]:
    """(node ids, {"graph", "labels"}) of ``split``'s graph, built once: the whole graph (shared by
    the splits, one incidence for every layer) or the split's computation subgraph (one per layer)."""
    key = split if self.subgraph_hops else "whole"
    if key not in self._parts:
      g, hops = self.graph, self.subgraph_hops
      if hops:
        nodes, sizes, layer_edges = computation_subgraph(g.edges, g.num_nodes, g.split_index(split),
                                                         hops)
        graph = graph_batch.build(g.features[nodes], layer_edges[0], sparse=self.sparse_features,
                                  layer_edges=layer_edges, sizes=sizes)
      else:
        nodes = np.arange(g.num_nodes)
        graph = graph_batch.build(g.features, g.edges, sparse=self.sparse_features)
      self._parts[key] = (nodes, {"graph": graph, "labels": g.labels[nodes]})
    return self._parts[key]

  def _split_batch(self, split: str) -> dict:
    nodes, arrays = self._part(split)
    return {**arrays, "mask": np.isin(nodes, self.graph.split_index(split))}  # mask [N']

  def batch(self, split: str, step: int, batch_size: int, seed: int = 0) -> dict:
    """The split's graph with ``mask`` = the nodes of ``split`` (step, batch_size, seed are ignored)."""
    del step, batch_size, seed
    self.check_split(split)
    return self._split_batch(split)

  def make_eval_set(self, split: str) -> dict:
    return self._split_batch(split)

  def num_batches(self, split: str, batch_size: int) -> int:
    self.check_split(split)
    return 1
