"""Graph attention layer (GAT, Veličković et al. 2018; GATv2, Brody et al. 2022).

    h = x W                                   # [N, H, F'], K = H copy-heads, each with its own W
    e_ij = score(h_i, h_j)                    # on every edge j → i (GAT: LeakyReLU(aᵀ[h_i ‖ h_j]))
    α_ij = softmax_j e_ij over i's incoming edges   (dropout on α when training)
    out_i = merge_k Σ_j α^k_ij v^k_j + b      # merge = concat (H·F') or mean (F')
    v = h, or dropout(h) when training with value_dropout_rate > 0 (GAT's reference code drops the
        projected features used as values, after the scores are computed from the undropped h)

All attention maths is in ``attnlab.kernels.graph`` (segment softmax: O(E) memory).

Parameter layout (``nnx.state(layer, nnx.Param)``):

* ``kernel``       [F_in, H, F']  the per-head projections W (Glorot uniform);
* ``score_params`` the graph score's parameters with a leading [H] axis, e.g. additive (GAT):
  ``{"a_dst": [H, F'], "a_src": [H, F']}`` (GAT's a = [a_dst; a_src]); gatv2: ``{"a": [H, F']}``;
  general: ``{"W": [H, F', F']}``; None for dot / scaled_dot / uniform;
* ``bias``         [H·F'] (concat) or [F'] (mean), added after merging heads (if use_bias).

The category: short form ``GraphAttention(F_in, F', H, score="gatv2", head_merge="mean",
dropout_rate=0.6, rngs=rngs)``, or spec form ``GraphAttention(F_in, F', attention=spec, rngs=rngs)``
with a graph ``attnlab.AttentionSpec`` (``graph=True``), kept unchanged as ``layer.attention``. The
layer honours its score (a ``graph_score``), num_heads, head_merge and dropout (on α), and refuses
what graph attention cannot do: normalizer other than softmax, target other than soft, split heads
(GAT's heads are copy heads: head_mode="copy"), fewer kv heads, an impl other than auto.

Graph input: a ``GraphBatch`` (attnlab.graph_batch: the scatter-free fast path for a fixed graph,
self loops as built), an edge list ``edges`` [2, E] of (sender, receiver) pairs, or a dense
``adjacency`` [N, N] bool with ``adjacency[i, j]`` = edge j → i (small graphs). With an edge list or
adjacency ``add_self_loops=True`` gives each node exactly one self loop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from
from flax.nnx.nn import initializers
from jax.experimental import sparse

from attnlab import kernels, validate
from attnlab.attention_spec import AttentionSpec, SpecError
from attnlab.graph_batch import GraphBatch, Incidence, SparseMatrix
from attnlab.kernels import _dropout, _edges, _segments

Array = jax.Array
_NAME = "GraphAttention"


class GraphAttention(nnx.Module):
  """A GAT layer with K = ``num_heads`` copy-heads of ``out_features`` units each."""

  def __init__(self, in_features: int, out_features: int, num_heads: int | None = None, *,
               score: str = "additive", head_merge: str = "concat", dropout_rate: float = 0.0,
               value_dropout_rate: float = 0.0, negative_slope: float = 0.2,
               add_self_loops: bool = True, use_bias: bool = True,
               deterministic: bool | None = None, kernel_init: Any = initializers.glorot_uniform(),
               bias_init: Any = initializers.zeros_init(), param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs, keep_rngs: bool = True, attention: AttentionSpec | None = None):
    self.in_features = validate.positive_int(_NAME, "in_features", in_features)
    self.out_features = validate.positive_int(_NAME, "out_features", out_features)
    if attention is None:
      validate.positive_int(_NAME, "num_heads", 1 if num_heads is None else num_heads)
      validate.rate(_NAME, "dropout_rate", dropout_rate)
      try:
        attention = AttentionSpec(graph=True, score=score, num_heads=num_heads or 1,
                                  head_mode="copy", head_merge=head_merge, dropout=dropout_rate)
      except SpecError as e:
        raise e.named(f"{_NAME}: ") from None
    else:
      _check_spec_form(attention, num_heads, score, head_merge, dropout_rate)
    self.attention = attention
    self.value_dropout_rate = validate.rate(_NAME, "value_dropout_rate", value_dropout_rate)
    self.negative_slope = float(negative_slope)
    self.add_self_loops, self.deterministic = add_self_loops, deterministic
    h, f = self.num_heads, out_features
    # Glorot with fan_in = F_in, fan_out = H·F' (as one [F_in, H·F'] matrix, like GAT's W per head
    # stacked): initialise flat, then view as [F_in, H, F'].
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, h * f), param_dtype)
                            .reshape(in_features, h, f))
    params = kernels.init_graph_params(self.score, rngs.params(), f, num_heads=h)
    self.score_params = nnx.data(None if params is None else jax.tree.map(nnx.Param, params))
    bias_size = h * f if self.head_merge == "concat" else f
    self.bias = (nnx.Param(bias_init(rngs.params(), (bias_size,), param_dtype)) if use_bias
                 else nnx.data(None))
    self.rngs = rngs.dropout.fork() if keep_rngs and self._drops else nnx.data(None)

  # The category, read from the spec (one source of truth).
  num_heads = property(lambda self: self.attention.num_heads)
  score = property(lambda self: self.attention.score)
  head_merge = property(lambda self: self.attention.head_merge)
  dropout_rate = property(lambda self: self.attention.dropout)

  @property
  def _drops(self) -> bool:
    return self.dropout_rate > 0 or self.value_dropout_rate > 0

  def __call__(self, x: Array, edges: Array | GraphBatch | Incidence | None = None, *,
               adjacency: Array | None = None, layer: int = 0, edges_prepared: bool = False,
               deterministic: bool | None = None, rngs: Any = None, return_weights: bool = False,
               sow_weights: bool = False):
    """Node features x [N, F_in] (dense, a ``jax.experimental.sparse.BCOO`` or a
    ``SparseMatrix``) -> [N, H·F'] (concat) or [N, F'] (mean).

    Exactly one of ``edges`` or ``adjacency`` [N, N] must be given. ``edges``: a ``GraphBatch``
    (its incidence for message-passing layer ``layer``), that ``Incidence`` itself, or an edge
    list [2, E] (sender, receiver). An incidence is used as given (self loops as built, no
    scatters); one with ``num_out`` receivers (a layer of a computation subgraph) gives outputs for
    the first ``num_out`` nodes only, [num_out, ...]. ``edges_prepared``: the edge list comes from
    ``kernels._edges.prepare_edges`` (self loops as wanted, sorted by receiver) and is used as is.
    With ``return_weights`` also returns the attention weights: for edges a dict
    ``{"edges": [2, E'], "alpha": [E', H]}`` (the edges actually used, self loops included), for
    an adjacency α [H, N, N]. ``sow_weights`` sows the same into ``nnx.Intermediate``.
    """
    if (edges is None) == (adjacency is None):
      raise ValueError(f"{_NAME}: pass exactly one of edges (a GraphBatch or [2, E]) or adjacency [N, N]")
    if isinstance(edges, GraphBatch):
      edges = edges.layer(layer)
    if x.ndim != 2 or x.shape[-1] != self.in_features:
      raise ValueError(f"{_NAME}: x must have shape [num_nodes, {self.in_features}], got {x.shape}")
    n, heads, f = x.shape[0], self.num_heads, self.out_features
    if isinstance(x, SparseMatrix):  # sparse bag-of-words features (Cora): O(nnz), no scatter
      h = _segments.matmul(x, self.kernel[...].reshape(self.in_features, heads * f))
      h = h.reshape(n, heads, f)  # [N, H, F']
    elif isinstance(x, sparse.BCOO):  # nnz-cost matmul
      h = (x @ self.kernel[...].reshape(self.in_features, heads * f)).reshape(n, heads, f)
    else:
      h = jnp.einsum("nf,fhd->nhd", x, self.kernel[...])  # [N, H, F']
    params = None if self.score_params is None else jax.tree.map(
        lambda p: p[...], self.score_params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    rng = self._dropout_rng(deterministic, rngs)
    values = None
    if rng is not None and self.value_dropout_rate > 0:
      rng, v_rng = jax.random.split(rng) if self.dropout_rate > 0 else (None, rng)
      values = _dropout.dropout_weights(h, v_rng, self.value_dropout_rate,  # [N, H, F'], gathered
                                        once=True)                        # per edge: once
    common = dict(score=self.score, params=params, negative_slope=self.negative_slope,
                  dropout_rate=self.dropout_rate if rng is not None else 0.0, rng=rng,
                  return_weights=True, values=values)
    if adjacency is not None:
      adjacency = jnp.asarray(adjacency)
      if adjacency.shape != (n, n):
        raise ValueError(f"{_NAME}: adjacency must have shape [{n}, {n}], got {adjacency.shape}")
      adjacency = adjacency.astype(jnp.bool_)
      if self.add_self_loops:
        adjacency = adjacency | jnp.eye(n, dtype=jnp.bool_)
      out, alpha = kernels.dense_graph_attention(h, adjacency, **common)  # [N, H, F'], [H, N, N]
      weights = alpha
    elif isinstance(edges, Incidence):
      out, alpha = kernels.graph_attention(h, edges, **common)
      weights = {"edges": jnp.stack([edges.in_index, edges.out_index]), "alpha": alpha}
    else:
      edges = jnp.asarray(edges)
      if edges.ndim != 2 or edges.shape[0] != 2:
        raise ValueError(f"{_NAME}: edges must have shape [2, E] (sender, receiver), got {edges.shape}")
      edge_mask = None
      if self.add_self_loops and not edges_prepared:
        edges, edge_mask = _edges.with_self_loops(edges, n)
      out, alpha = kernels.graph_attention(h, edges, edge_mask=edge_mask,
                                           indices_are_sorted=edges_prepared, **common)
      weights = {"edges": edges, "alpha": alpha}
    if self.head_merge == "concat":
      out = out.reshape(out.shape[0], self.num_heads * self.out_features)  # [N_out, H·F']
    else:
      out = jnp.mean(out, axis=1)  # [N, F']
    if self.bias is not None:
      out = out + self.bias[...]
    if sow_weights:
      self.sow(nnx.Intermediate, "attention_weights", weights)
    return (out, weights) if return_weights else out

  def _dropout_rng(self, deterministic, rngs):
    if not self._drops:
      return None
    det = first_from(deterministic, self.deterministic, error_msg=(
        f"{_NAME}: no `deterministic` argument given at construction or call (needed for "
        f"dropout_rate={self.dropout_rate}, value_dropout_rate={self.value_dropout_rate})"))
    if det:
      return None
    stream = rngs.dropout if isinstance(rngs, nnx.Rngs) else (
        rngs if isinstance(rngs, rnglib.RngStream) else self.rngs)
    if stream is None:
      raise ValueError(f"{_NAME}: pass rngs (with a 'dropout' stream) to __call__, or build the "
                       "layer with keep_rngs=True")
    return stream()


def _check_spec_form(attention: Any, num_heads: Any, score: str, head_merge: str,
                     dropout_rate: float) -> None:
  """``attention=`` carries the whole category; refuse keywords beside it and what it cannot honour."""
  if not isinstance(attention, AttentionSpec):
    raise TypeError(f"{_NAME}: attention must be an attnlab.AttentionSpec, got {type(attention).__name__}")
  both = [f"{k}={v!r}" for k, v, default in (("num_heads", num_heads, None), ("score", score, "additive"),
                                              ("head_merge", head_merge, "concat"),
                                              ("dropout_rate", dropout_rate, 0.0)) if v != default]
  if both:
    raise ValueError(f"{_NAME}: give the category either as keywords or as attention=AttentionSpec(...), "
                     f"not both; got attention= and {', '.join(both)}")
  if not attention.graph:
    raise ValueError(f"{_NAME}: attention must be a graph attention spec (graph=True: its score is a "
                     f"graph_score), got graph=False")
  attention.require(_NAME, normalizer=("softmax",), target=("soft",), head_mode=("copy",),
                    num_kv_heads=(None, attention.num_heads), impl=("auto",))


def node_dropout(x: Array | sparse.BCOO | SparseMatrix, rate: float, rng: Array):
  """Inverted dropout of node features or hidden states read by gathers, computed once into memory.

  Sparse features (``SparseMatrix`` or ``BCOO``) drop their stored entries only (GAT's input
  dropout at nnz cost: the implicit zeros stay zero either way).
  """
  if rate == 0:
    return x
  if not isinstance(x, (sparse.BCOO, SparseMatrix)):
    return _dropout.dropout_weights(x, rng, rate, once=True)
  data = x.values if isinstance(x, SparseMatrix) else x.data
  keep = _dropout.materialize(jax.random.bernoulli(rng, 1.0 - rate, data.shape))  # read by gathers
  data = jnp.where(keep, data / (1.0 - rate), 0.0)
  if isinstance(x, SparseMatrix):
    return SparseMatrix(_dropout.materialize(data), x.incidence)
  return sparse.BCOO((data, x.indices), shape=x.shape)
