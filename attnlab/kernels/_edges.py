"""Host-side edge preparation for graph attention (speed layer; NumPy unless noted).

``prepare_edges`` deduplicates, adds self loops and sorts by receiver; ``edge_incidence`` turns the
result into the ``_segments.Incidence`` that ``graph_attention`` runs scatter-free. Edges are
[2, E] (sender, receiver) pairs: message j -> i is the column (j, i).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.kernels import _segments

Array = jax.Array


def with_self_loops(edges: Array, num_nodes: int) -> tuple[Array, Array]:
  """Jit-friendly self loops: (edges [2, E + N], edge_mask [E + N]) with the existing self loops
  masked out and one loop i → i appended per node (static shapes, unsorted)."""
  edges = jnp.asarray(edges)
  loops = jnp.arange(num_nodes, dtype=edges.dtype)
  keep = edges[0] != edges[1]  # [E]
  all_edges = jnp.concatenate([edges, jnp.stack([loops, loops])], axis=1)  # [2, E + N]
  return all_edges, jnp.concatenate([keep, jnp.ones((num_nodes,), jnp.bool_)])


def prepare_edges(edges, num_nodes: int, *, self_loops: bool = True,
                  num_out: int | None = None) -> np.ndarray:
  """Host-side preparation, once per graph (NumPy, not traceable): the fast path of the layer.

  Drops duplicate edges and self loops, adds one self loop per receiver if ``self_loops``, and
  sorts by (receiver, sender) so the segment ops can use ``indices_are_sorted=True``. Receivers are
  the first ``num_out`` nodes (default: all ``num_nodes``; fewer for a layer of a computation subgraph,
  whose outputs are needed only there). Returns int32 [2, E'].
  """
  e = np.asarray(edges)
  num_out = num_nodes if num_out is None else num_out
  if e.ndim != 2 or e.shape[0] != 2:
    raise ValueError(f"prepare_edges: edges must have shape [2, E] (sender, receiver), got {e.shape}")
  if not 0 <= num_out <= num_nodes:
    raise ValueError(f"prepare_edges: num_out must lie in [0, num_nodes={num_nodes}], got {num_out}")
  for row, what, n in ((0, "sender", num_nodes), (1, "receiver", num_out)):
    if e.shape[1] and (e[row].min() < 0 or e[row].max() >= n):
      raise ValueError(f"prepare_edges: {what} ids must lie in [0, {n}), got range "
                       f"[{e[row].min()}, {e[row].max()}]")
  e = e[:, e[0] != e[1]]
  if self_loops:
    loops = np.arange(num_out)
    e = np.concatenate([e, np.stack([loops, loops])], axis=1)
  e = np.unique(e.astype(np.int64), axis=1)  # sorted by (sender, receiver): re-sort by receiver
  order = np.lexsort((e[0], e[1]))
  return e[:, order].astype(np.int32)


def edge_incidence(edges, num_nodes: int, *, self_loops: bool = True,
                   num_out: int | None = None) -> _segments.Incidence:
  """Host-side: the ``_segments.Incidence`` of ``prepare_edges(edges, num_nodes, ...)``
  (out = receiver, in = sender), the fast path of ``graph_attention`` for a fixed graph. With ``num_out``
  the receivers are the first ``num_out`` nodes and the layer outputs only those rows."""
  e = prepare_edges(edges, num_nodes, self_loops=self_loops, num_out=num_out)
  return _segments.incidence(e[1], e[0], num_nodes if num_out is None else num_out, num_nodes)


def edges_to_adjacency(edges, num_nodes: int) -> Array:
  """Dense bool adjacency [N, N] with ``adjacency[i, j]`` = edge j → i (duplicates collapse)."""
  edges = jnp.asarray(edges)
  return jnp.zeros((num_nodes, num_nodes), jnp.bool_).at[edges[1], edges[0]].set(True)
