"""Graph attention: scores on the edges of a graph, softmax over each node's incoming edges.

Nodes attend over their in-neighbours. An edge list ``edges`` [2, E] holds (sender, receiver) pairs,
message j -> i; node i's output is Σ_{j→i} α_ij h_j with α_i· = softmax over i's incoming edges.
Memory is O(E): scores live on edges, the softmax uses ``jax.ops.segment_max/segment_sum`` over
receivers. The dense path takes ``adjacency`` [N, N] bool with ``adjacency[i, j]`` = "edge j → i"
(the attention-mask convention: row = query/receiver, column = key/sender).

Graph scores (registry kind ``"graph_score"``) are split like the sequence scores so that all
per-node work is done once per node and only small features are gathered per edge:

    fd = project_dst(params, h)            # [N, F] -> [N, A]   (receiver role)
    fs = project_src(params, h)            # [N, F] -> [N, A]   (sender role)
    e  = edge(params, fd[dst], fs[src], negative_slope=0.2)   # [..., A], [..., A] -> [...]

| name         | e_ij (i = receiver, j = sender)                      | params per head           | A |
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

from attnlab import registry
from attnlab.kernels import _dtypes, _params
from attnlab.kernels import normalizers as _normalizers
from attnlab.kernels import _segments
from attnlab.kernels._dropout import dropout_weights

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


def segment_softmax(scores: Array, segments: Array | _segments.Incidence,
                    num_segments: int | None = None, *, mask: Array | None = None,
                    indices_are_sorted: bool = False) -> Array:
  """Softmax of ``scores`` [E, ...] within each segment (all entries sharing a receiver).

  ``segments``: the receiver id of each entry [E] (with ``num_segments``), or an ``Incidence``
  (``_edges.edge_incidence``; receivers = its out rows, scatter-free). ``mask`` [E] bool drops
  entries (weight 0; ids only). Segments with no (unmasked) entry get nothing. Low-precision
  scores are normalised in float32; α has the scores' dtype.
  """
  if isinstance(segments, _segments.Incidence):
    if mask is not None or num_segments is not None:
      raise ValueError("segment_softmax: mask and num_segments are for receiver ids, not an Incidence "
                       "(its out rows are the segments)")
    return _segments.softmax(scores, segments)
  if num_segments is None:
    raise ValueError("segment_softmax: num_segments is required with receiver ids")
  dtype, scores = scores.dtype, _dtypes.upcast(scores)
  if mask is not None:
    scores = jnp.where(mask.reshape(mask.shape + (1,) * (scores.ndim - 1)), scores, -jnp.inf)
  seg = dict(num_segments=num_segments, indices_are_sorted=indices_are_sorted)
  m = jax.ops.segment_max(scores, segments, **seg)  # [N, ...], -inf for empty segments
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  e = jnp.exp(scores - m[segments])  # [E, ...], 0 where masked
  total = jax.ops.segment_sum(e, segments, **seg)  # [N, ...]
  return (e / jnp.where(total > 0, total, 1.0)[segments]).astype(dtype)


def edge_scores(h: Array, edges: Array | _segments.Incidence, *, score: str = "additive",
                params: Any = None, negative_slope: float = 0.2) -> Array:
  """Unnormalised scores [E, H] of the edges (sender, receiver) [2, E] or ``edge_incidence``, for
  node features h [N, H, F]."""
  s, fd, fs, p_axis = _node_features(score, params, h)  # fd, fs [N, H, A]
  if isinstance(edges, _segments.Incidence):  # gathers whose gradients are scatter-free sums
    fd_e = _segments.take(fd[:edges.num_out], edges, "out")  # [E, H, A]; receivers: the first rows
    fs_e = _segments.take(fs, edges, "in")  # [E, H, A]
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
    edges: [2, E] int (sender, receiver) pairs (duplicate edges count as separate neighbours), or an
      ``edge_incidence`` of a fixed graph, used as given: the fast path (gathers and adds, no
      scatters, also in the gradient; the dropout mask is computed once). An incidence built with
      ``num_out`` < N has its receivers in the first ``num_out`` rows of h and outputs only those.
    score: a registered graph score name. params: its parameters (per head or shared).
    edge_mask: [E] bool, False drops an edge (e.g. self loops to be replaced).
    dropout_rate: dropout on the attention coefficients (after the softmax), needs ``rng``.
    indices_are_sorted: edges are sorted by receiver (faster segment ops).
    return_weights: also return α [E, H].
    values: [N, H, Fv] node values v summed with the weights (default h), e.g. the dropped-out h of
      GAT's reference code (scores from h, sum over dropout(h)).
  Returns:
    out [N, H, Fv] ([num_out, H, Fv] for such an incidence; zeros for nodes without incoming
    edges), and α [E, H] with return_weights.
  """
  n = h.shape[0]
  fixed = isinstance(edges, _segments.Incidence)  # the fast path (checked before any gather)
  if fixed:
    if edge_mask is not None:
      raise ValueError("graph_attention: edge_mask is not supported with an edge_incidence (build "
                       "the incidence from the edges to keep)")
    if edges.num_in != n or edges.num_out > n:
      raise ValueError(f"graph_attention: the edge_incidence is for {edges.num_in} sender and "
                       f"{edges.num_out} receiver nodes, h has {n} (receivers are its first rows)")
  scores = edge_scores(h, edges, score=score, params=params, negative_slope=negative_slope)
  v = h if values is None else values  # [N, H, Fv]
  drop = dropout_rate != 0 and rng is not None
  if fixed:
    alpha = segment_softmax(scores, edges)  # [E, H]
    dropped = dropout_weights(alpha, rng, dropout_rate, once=True) if drop else alpha
    out = _segments.gather_sum(v, dropped, edges)  # [N, H, Fv]
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
  Returns out [N, H, Fv] and, with ``return_weights``, α [H, N, N] (row i = receiver).
  """
  s, fd, fs, p_axis = _node_features(score, params, h)  # fd, fs [N, H, A]
  edge = lambda p, a, b: s.edge(p, a[:, None, :], b[None, :, :], negative_slope=negative_slope)
  scores = jax.vmap(edge, in_axes=(p_axis, 1, 1))(params, fd, fs)  # [H, N, N]
  alpha = jax.vmap(_normalizers.softmax, in_axes=(0, None))(scores, adjacency)  # [H, N, N]
  dropped = alpha if dropout_rate == 0 or rng is None else dropout_weights(alpha, rng, dropout_rate)
  out = jnp.einsum("hij,jhf->ihf", dropped, h if values is None else values)  # [N, H, Fv]
  return (out, alpha) if return_weights else out
