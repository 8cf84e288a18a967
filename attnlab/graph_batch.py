"""``GraphBatch``: one graph as the graph attention layers read it (a pytree of arrays).

A node classifier's batch is ``{"graph": GraphBatch, "labels": [N], "mask": [N]}``
(attnlab.data.graph builds it on the host; pass it to jitted functions as any pytree).

* ``features``: node features, [N, F] dense or a ``SparseMatrix`` [N, F] of the stored entries;
* ``edges``: int32 [2, E] (sender, receiver) pairs of the graph, no self loops, for readers (layer
  0's edges for a computation subgraph);
* ``layers``: the ``Incidence`` each message-passing layer runs on (self loops included,
  scatter-free; ``kernels._edges.edge_incidence``): one shared by every layer (the whole graph), or
  one per layer (a computation subgraph, whose layer l has as receivers only the first rows layer
  l + 1 reads).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from attnlab.kernels import _edges
from attnlab.kernels._segments import Incidence, SparseMatrix, incidence

Array = jax.Array

__all__ = ["GraphBatch", "Incidence", "SparseMatrix", "build", "sparse_features"]


class GraphBatch(NamedTuple):
  """A graph for ``GraphAttention`` layers (see the module docstring)."""
  features: Array | SparseMatrix  # [N, F]
  edges: Array  # [2, E] (sender, receiver)
  layers: tuple[Incidence, ...]  # one, or one per message-passing layer

  def layer(self, index: int) -> Incidence:
    """The incidence of message-passing layer ``index`` (the shared one for a whole graph)."""
    return self.layers[0] if len(self.layers) == 1 else self.layers[index]

  @property
  def num_nodes(self) -> int:
    return self.features.shape[0]


def sparse_features(features: np.ndarray) -> SparseMatrix:
  """The stored (nonzero) entries of dense [N, F] features, in row-major order (host, NumPy)."""
  rows, cols = np.nonzero(features)
  return SparseMatrix(features[rows, cols].astype(np.float32), incidence(rows, cols, *features.shape))


def build(features: np.ndarray, edges: np.ndarray, *, sparse: bool = False,
          layer_edges: list[np.ndarray] | None = None, sizes: list[int] | None = None) -> GraphBatch:
  """Host-side ``GraphBatch`` of features [N, F] and edges [2, E] (sender, receiver).

  Without ``layer_edges`` every layer runs on ``edges`` plus one self loop per node. With
  ``layer_edges`` [L][2, E_l] and ``sizes`` [L + 1] (a computation subgraph,
  attnlab.data.graph.computation_subgraph), layer l reads the first ``sizes[L - l]`` nodes and
  outputs the first ``sizes[L - 1 - l]``.
  """
  n = features.shape[0]
  if layer_edges is None:
    layers = (_edges.edge_incidence(edges, n),)
  else:
    hops = len(layer_edges)
    layers = tuple(_edges.edge_incidence(e, sizes[hops - layer], num_out=sizes[hops - 1 - layer])
                   for layer, e in enumerate(layer_edges))
  x = sparse_features(features) if sparse else features
  return GraphBatch(x, np.asarray(edges, np.int32), layers)
