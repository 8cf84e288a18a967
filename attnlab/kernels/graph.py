"""Graph attention: scores on the edges of a graph, softmax over each node's incoming edges.

Nodes attend over their in-neighbours. An edge list ``edges`` [2, E] holds (source, target) pairs,
message j -> i; node i's output is Σ_{j→i} α_ij h_j with α_i· = softmax over i's incoming edges.
Memory is O(E): scores live on edges, the softmax uses ``jax.ops.segment_max/segment_sum`` over
targets. The dense path takes ``adjacency`` [N, N] bool with ``adjacency[i, j]`` = "edge j → i"
(the attention-mask convention: row = query/target, column = key/source).

Graph scores (registry kind ``"graph_score"``) are split like the sequence scores so that all
per-node work is done once per node and only small features are gathered per edge:

    fd = project_dst(params, h)            # [N, F] -> [N, A]   (target role)
    fs = project_src(params, h)            # [N, F] -> [N, A]   (source role)
    e  = edge(params, fd[dst], fs[src], negative_slope=0.2)   # [..., A], [..., A] -> [...]

| name         | e_ij (i = target, j = source)                      | params per head           | A |
|--------------|----------------------------------------------------|---------------------------|---|
| `additive`   | LeakyReLU(a_dstᵀ h_i + a_srcᵀ h_j)  (GAT)          | {"a_dst": [F], "a_src": [F]} | 1 |
| `gatv2`      | aᵀ LeakyReLU(h_i + h_j)  (GATv2, shared W)         | {"a": [F]}                | F |
| `dot`        | h_iᵀ h_j                                           | None                      | F |
| `scaled_dot` | h_iᵀ h_j / √F                                      | None                      | F |
| `general`    | h_iᵀ W h_j                                         | {"W": [F, F]}             | F |
| `uniform`    | 0 (softmax = mean over in-neighbours, GCN-style)   | None                      | 0 |

(GAT's aᵀ[W h_i ‖ W h_j] is ``additive`` with a = [a_dst; a_src]; GATv2's aᵀ LeakyReLU(W[h_i ‖ h_j])
is ``gatv2`` with the value projection shared for both roles, as ``share_weights=True`` in PyG.)
Here h = W x are the layer's per-head projected node features, so the additive score gathers one
scalar per edge and head. All kernels take h [N, H, F] (H heads) and params with a leading [H] axis
(``init_graph_params(score, rng, F, num_heads=H)``) or shared by all heads.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import registry
from attnlab.kernels import _dtypes, _params
from attnlab.kernels import normalizers as _normalizers
from attnlab.kernels import segments
from attnlab.kernels.dropout import dropout_weights

Array = jax.Array


class GraphScore(NamedTuple):
  """A registered graph score; ``init`` is None for parameter-free scores."""
  edge: Callable[..., Array]  # (params, fd [..., A], fs [..., A], *, negative_slope) -> [...]
  project_dst: Callable[[Any, Array], Array]
  project_src: Callable[[Any, Array], Array]
  init: Callable[..., Any] | None = None


def _same(params, h):
  del params
  return h


def _leaky(x, negative_slope):
  return jax.nn.leaky_relu(x, negative_slope)


def _dot_edge(params, fd, fs, *, negative_slope):
  del params, negative_slope
  return jnp.sum(fd * fs, axis=-1)


def _glorot(rng, shape, fan_in, fan_out):
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(rng, shape, jnp.float32, -limit, limit)


def _init_additive(rng, dim):
  r_d, r_s = jax.random.split(rng)
  return {"a_dst": _glorot(r_d, (dim,), dim, 1), "a_src": _glorot(r_s, (dim,), dim, 1)}


registry.register("graph_score", "additive", GraphScore(
    edge=lambda params, fd, fs, *, negative_slope: _leaky(fd[..., 0] + fs[..., 0], negative_slope),
    project_dst=lambda params, h: (h @ params["a_dst"])[:, None],  # [N, 1]
    project_src=lambda params, h: (h @ params["a_src"])[:, None],  # [N, 1]
    init=_init_additive))
registry.register("graph_score", "gatv2", GraphScore(
    edge=lambda params, fd, fs, *, negative_slope: _leaky(fd + fs, negative_slope) @ params["a"],
    project_dst=_same, project_src=_same,
    init=lambda rng, dim: {"a": _glorot(rng, (dim,), dim, 1)}))
registry.register("graph_score", "dot", GraphScore(
    edge=_dot_edge, project_dst=_same, project_src=_same))
registry.register("graph_score", "scaled_dot", GraphScore(
    edge=_dot_edge, project_dst=lambda params, h: h * (1.0 / math.sqrt(h.shape[-1])),
    project_src=_same))
registry.register("graph_score", "general", GraphScore(
    edge=_dot_edge, project_dst=lambda params, h: h @ params["W"],  # [N, F] @ [F, F]
    project_src=_same,
    init=lambda rng, dim: {"W": jax.random.normal(rng, (dim, dim), jnp.float32) / math.sqrt(dim)}))
registry.register("graph_score", "uniform", GraphScore(
    edge=lambda params, fd, fs, *, negative_slope: jnp.zeros(fd.shape[:-1], fd.dtype),
    project_dst=lambda params, h: h[:, :0], project_src=lambda params, h: h[:, :0]))


def get_graph_score(name: str) -> GraphScore:
  member = registry.get("graph_score", name)
  if not isinstance(member, GraphScore):
    raise TypeError(f"graph_score {name!r} must be a GraphScore, got {type(member).__name__}")
  return member


def init_graph_params(score: str, rng: Array, dim: int, *, num_heads: int | None = None) -> Any:
  """Parameters of graph score ``score`` for features of size ``dim`` (leading [num_heads] if given)."""
  s = get_graph_score(score)
  if s.init is None:
    return None
  if num_heads is None:
    return s.init(rng, dim)
  return jax.vmap(lambda r: s.init(r, dim))(jax.random.split(rng, num_heads))


def _node_features(name: str, params: Any, h: Array):
  """(score, fd [N, H, A], fs [N, H, A], params axis) for node features h [N, H, F]."""
  s = get_graph_score(name)
  p_axis = 0 if _params.per_head("graph attention", name, s.init, params, h.shape[-1], h.shape[1],
                                 "init_graph_params") else None
  f = lambda proj: jax.vmap(proj, in_axes=(p_axis, 1), out_axes=1)(params, h)
  return s, f(s.project_dst), f(s.project_src), p_axis


def segment_softmax(scores: Array, segment_ids: Array, num_segments: int, *,
                    mask: Array | None = None, indices_are_sorted: bool = False) -> Array:
  """Softmax of ``scores`` [E, ...] within each segment (all entries sharing a segment id).

  ``mask`` [E] bool drops entries (weight 0). Segments with no (unmasked) entry get nothing.
  Low-precision scores are normalised in float32; α has the scores' dtype.
  """
  dtype, scores = scores.dtype, _dtypes.upcast(scores)
  if mask is not None:
    scores = jnp.where(mask.reshape(mask.shape + (1,) * (scores.ndim - 1)), scores, -jnp.inf)
  seg = dict(num_segments=num_segments, indices_are_sorted=indices_are_sorted)
  m = jax.ops.segment_max(scores, segment_ids, **seg)  # [N, ...], -inf for empty segments
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  e = jnp.exp(scores - m[segment_ids])  # [E, ...], 0 where masked
  total = jax.ops.segment_sum(e, segment_ids, **seg)  # [N, ...]
  return (e / jnp.where(total > 0, total, 1.0)[segment_ids]).astype(dtype)


def edge_scores(h: Array, edges: Array | segments.Incidence, *, score: str = "additive",
                params: Any = None, negative_slope: float = 0.2) -> Array:
  """Unnormalised scores [E, H] of the edges (source, target) [2, E] or ``edge_incidence``, for
  node features h [N, H, F]."""
  s, fd, fs, p_axis = _node_features(score, params, h)  # fd, fs [N, H, A]
  if isinstance(edges, segments.Incidence):  # gathers whose gradients are scatter-free sums
    fd_e = segments.take(fd[:edges.num_out], edges, "out")  # [E, H, A]; targets: the first rows
    fs_e = segments.take(fs, edges, "in")  # [E, H, A]
  else:
    fd_e, fs_e = fd[edges[1]], fs[edges[0]]  # [E, H, A]
  edge = lambda p, a, b: s.edge(p, a, b, negative_slope=negative_slope)
  return jax.vmap(edge, in_axes=(p_axis, 1, 1), out_axes=1)(params, fd_e, fs_e)  # [E, H]


def graph_attention(h: Array, edges: Array, *, score: str = "additive", params: Any = None,
                    edge_mask: Array | None = None, negative_slope: float = 0.2,
                    dropout_rate: float = 0.0, rng: Array | None = None,
                    indices_are_sorted: bool = False, return_weights: bool = False,
                    values: Array | None = None):
  """Edge-list graph attention: out_i = Σ_{e=(j→i)} α_e v_j, α softmax over i's incoming edges.

  Args:
    h: [N, H, F] per-head node features (keys and queries; also the values v unless ``values``).
    edges: [2, E] int (source, target) pairs (duplicate edges count as separate neighbours), or an
      ``edge_incidence`` of a fixed graph, used as given: the fast path (gathers and adds, no
      scatters, also in the gradient; the dropout mask is computed once). An incidence built with
      ``num_out`` < N has its targets in the first ``num_out`` rows of h and outputs only those.
    score: a registered graph score name. params: its parameters (per head or shared).
    edge_mask: [E] bool, False drops an edge (e.g. self loops to be replaced).
    dropout_rate: dropout on the attention coefficients (after the softmax), needs ``rng``.
    indices_are_sorted: edges are sorted by target (faster segment ops).
    return_weights: also return α [E, H].
    values: [N, H, Fv] node values v summed with the weights (default h), e.g. the dropped-out h of
      GAT's reference code (scores from h, sum over dropout(h)).
  Returns:
    out [N, H, Fv] ([num_out, H, Fv] for such an incidence; zeros for nodes without incoming
    edges), and α [E, H] with return_weights.
  """
  n = h.shape[0]
  fixed = isinstance(edges, segments.Incidence)  # the fast path (checked before any gather)
  if fixed:
    if edge_mask is not None:
      raise ValueError("graph_attention: edge_mask is not supported with an edge_incidence (build "
                       "the incidence from the edges to keep)")
    if edges.num_in != n or edges.num_out > n:
      raise ValueError(f"graph_attention: the edge_incidence is for {edges.num_in} source and "
                       f"{edges.num_out} target nodes, h has {n} (targets are its first rows)")
  scores = edge_scores(h, edges, score=score, params=params, negative_slope=negative_slope)
  v = h if values is None else values  # [N, H, Fv]
  drop = dropout_rate != 0 and rng is not None
  if fixed:
    alpha = segments.segment_softmax(scores, edges)  # [E, H]
    dropped = dropout_weights(alpha, rng, dropout_rate, once=True) if drop else alpha
    out = segments.gather_sum(v, dropped, edges)  # [N, H, Fv]
    return (out, alpha) if return_weights else out
  alpha = segment_softmax(scores, edges[1], n, mask=edge_mask,
                          indices_are_sorted=indices_are_sorted)  # [E, H]
  dropped = dropout_weights(alpha, rng, dropout_rate) if drop else alpha
  out = jax.ops.segment_sum(dropped[:, :, None] * v[edges[0]], edges[1], num_segments=n,
                            indices_are_sorted=indices_are_sorted)  # [N, H, Fv]
  return (out, alpha) if return_weights else out


def dense_graph_attention(h: Array, adjacency: Array, *, score: str = "additive",
                          params: Any = None, negative_slope: float = 0.2,
                          dropout_rate: float = 0.0, rng: Array | None = None,
                          return_weights: bool = False, values: Array | None = None):
  """Dense-adjacency graph attention (O(N²) memory, for small graphs); same maths as the edge list.

  ``adjacency`` [N, N] bool, ``adjacency[i, j]`` = edge j → i; ``values`` [N, H, Fv] (default h).
  Returns out [N, H, Fv] and, with ``return_weights``, α [H, N, N] (row i = target).
  """
  s, fd, fs, p_axis = _node_features(score, params, h)  # fd, fs [N, H, A]
  edge = lambda p, a, b: s.edge(p, a[:, None, :], b[None, :, :], negative_slope=negative_slope)
  scores = jax.vmap(edge, in_axes=(p_axis, 1, 1))(params, fd, fs)  # [H, N, N]
  alpha = jax.vmap(_normalizers.softmax, in_axes=(0, None))(scores, adjacency)  # [H, N, N]
  dropped = alpha if dropout_rate == 0 or rng is None else dropout_weights(alpha, rng, dropout_rate)
  out = jnp.einsum("hij,jhf->ihf", dropped, h if values is None else values)  # [N, H, Fv]
  return (out, alpha) if return_weights else out


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

  Drops duplicate edges and self loops, adds one self loop per target node if ``self_loops``, and
  sorts by (target, source) so the segment ops can use ``indices_are_sorted=True``. Targets are the
  first ``num_out`` nodes (default: all ``num_nodes``; fewer for a layer of a computation subgraph,
  whose outputs are needed only there). Returns int32 [2, E'].
  """
  e = np.asarray(edges)
  num_out = num_nodes if num_out is None else num_out
  if e.ndim != 2 or e.shape[0] != 2:
    raise ValueError(f"prepare_edges: edges must have shape [2, E] (source, target), got {e.shape}")
  if not 0 <= num_out <= num_nodes:
    raise ValueError(f"prepare_edges: num_out must lie in [0, num_nodes={num_nodes}], got {num_out}")
  for row, what, n in ((0, "source", num_nodes), (1, "target", num_out)):
    if e.shape[1] and (e[row].min() < 0 or e[row].max() >= n):
      raise ValueError(f"prepare_edges: {what} ids must lie in [0, {n}), got range "
                       f"[{e[row].min()}, {e[row].max()}]")
  e = e[:, e[0] != e[1]]
  if self_loops:
    loops = np.arange(num_out)
    e = np.concatenate([e, np.stack([loops, loops])], axis=1)
  e = np.unique(e.astype(np.int64), axis=1)  # sorted by (source, target): re-sort by target
  order = np.lexsort((e[0], e[1]))
  return e[:, order].astype(np.int32)


def layer_prefix(layer: int) -> str:
  """The batch key prefix of message-passing layer ``layer``'s own edge incidence (a computation
  subgraph serves one per layer, attnlab.data.graph; ``segments.from_arrays(batch, prefix)``)."""
  return f"edge_lists/layer{layer}"


def edge_incidence(edges, num_nodes: int, *, self_loops: bool = True,
                   num_out: int | None = None) -> segments.Incidence:
  """Host-side: the ``segments.Incidence`` of ``prepare_edges(edges, num_nodes, ...)`` (out =
  target, in = source), the fast path of ``graph_attention`` for a fixed graph. With ``num_out``
  the targets are the first ``num_out`` nodes and the layer outputs only those rows."""
  e = prepare_edges(edges, num_nodes, self_loops=self_loops, num_out=num_out)
  return segments.incidence(e[1], e[0], num_nodes if num_out is None else num_out, num_nodes)


def edges_to_adjacency(edges, num_nodes: int) -> Array:
  """Dense bool adjacency [N, N] with ``adjacency[i, j]`` = edge j → i (duplicates collapse)."""
  edges = jnp.asarray(edges)
  return jnp.zeros((num_nodes, num_nodes), jnp.bool_).at[edges[1], edges[0]].set(True)
