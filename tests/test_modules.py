"""Tests of the attention layers: attnlab.modules.MultiHeadAttention and GraphAttention."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from attnlab import graph_batch, kernels
from attnlab.kernels import _dropout, _edges, _segments
from attnlab.modules import GraphAttention, MultiHeadAttention


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _np_softmax(s):
  e = np.exp(s - s.max())
  return e / e.sum()


def _param_values(module):
  return {"/".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(
      nnx.state(module, nnx.Param))}


# ------------------------------------------------------------------ MultiHeadAttention vs flax ---

CASES = {
    "self": dict(kv_len=None, mask=None, num_kv_heads=None, causal=False),
    "cross": dict(kv_len=7, mask=None, num_kv_heads=None, causal=False),
    "cross_mask": dict(kv_len=7, mask="random", num_kv_heads=None, causal=False),
    "self_per_head_mask": dict(kv_len=None, mask="per_head", num_kv_heads=None, causal=False),
    "causal": dict(kv_len=None, mask=None, num_kv_heads=None, causal=True),
    "gqa_mask": dict(kv_len=7, mask="random", num_kv_heads=2, causal=False),
    "mqa_causal": dict(kv_len=None, mask=None, num_kv_heads=1, causal=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mha_equals_flax_under_copied_state(case):
  c = CASES[case]
  b, lq, d_in, heads = 2, 5, 6, 4
  kw = dict(num_heads=heads, in_features=d_in, qkv_features=8, out_features=3,
            num_kv_heads=c["num_kv_heads"], decode=False)
  ref = nnx.MultiHeadAttention(**kw, rngs=nnx.Rngs(0))
  ours = MultiHeadAttention(**kw, rngs=nnx.Rngs(1))
  assert jax.tree.map(jnp.shape, nnx.state(ours, nnx.Param)) == jax.tree.map(
      jnp.shape, nnx.state(ref, nnx.Param))
  nnx.update(ours, nnx.state(ref, nnx.Param))
  x = _normal(1, (b, lq, d_in))
  y = None if c["kv_len"] is None else _normal(2, (b, c["kv_len"], d_in))
  lk = lq if y is None else c["kv_len"]
  mask = None
  if c["mask"] is not None:
    shape = (b, heads if c["mask"] == "per_head" else 1, lq, lk)
    mask = jax.random.bernoulli(jax.random.key(3), 0.6, shape).at[..., 0].set(True)
  want, inter = nnx.capture(lambda m: m(x, y, mask=mask, is_causal=c["causal"], sow_weights=True),
                            nnx.Intermediate)(ref)
  got, weights = ours(x, y, mask=mask, is_causal=c["causal"], return_weights=True)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
  flax_weights = inter["attention_weights"].get_value()[0]
  chex.assert_trees_all_close(weights, flax_weights, atol=1e-6)


def test_mha_float_mask_and_extra_batch_dims_equal_flax():
  kw = dict(num_heads=2, in_features=4, qkv_features=4, decode=False)
  ref = nnx.MultiHeadAttention(**kw, rngs=nnx.Rngs(0))
  ours = MultiHeadAttention(**kw, rngs=nnx.Rngs(5))
  nnx.update(ours, nnx.state(ref, nnx.Param))
  x = _normal(0, (2, 3, 5, 4))  # two batch dims
  mask = nnx.make_attention_mask(jnp.ones((2, 3, 5)), jnp.arange(5) < 3)  # float 0/1
  chex.assert_trees_all_close(ours(x, mask=mask), ref(x, mask=mask), atol=1e-5)


def test_sow_weights_into_intermediate():
  layer = MultiHeadAttention(2, 4, rngs=nnx.Rngs(0), decode=False)
  x = _normal(0, (1, 3, 4))
  (_, w), inter = nnx.capture(lambda m: m(x, sow_weights=True, return_weights=True),
                              nnx.Intermediate)(layer)
  sown = inter["attention_weights"].get_value()
  assert len(sown) == 1
  chex.assert_trees_all_close(sown[0], w)
  chex.assert_trees_all_close(w.sum(-1), jnp.ones((1, 2, 3)), atol=1e-6)


# --------------------------------------------------------------- categories, heads, params -------

def test_split_vs_copy_param_shapes_and_mean_merge():
  split = MultiHeadAttention(4, 6, 8, 5, rngs=nnx.Rngs(0))
  copy = MultiHeadAttention(4, 6, 8, 5, num_kv_heads=2, head_mode="copy", head_merge="mean",
                            score="general", rngs=nnx.Rngs(0))
  s, c = _param_values(split), _param_values(copy)
  assert s["query/kernel"].shape == (6, 4, 2) and s["key/kernel"].shape == (6, 4, 2)
  assert s["out/kernel"].shape == (4, 2, 5) and s["query/bias"].shape == (4, 2)
  assert c["query/kernel"].shape == (6, 4, 8) and c["key/kernel"].shape == (6, 2, 8)
  assert c["value/bias"].shape == (2, 8) and c["out/kernel"].shape == (8, 5)
  assert c["score_params/W"].shape == (4, 8, 8)  # one general-score matrix per head
  assert not any(k.startswith("score_params") for k in s)
  assert split(_normal(0, (2, 3, 6))).shape == (2, 3, 5)


def test_copy_mean_gqa_general_score_matches_numpy():
  """Copy heads, mean merge, 2 kv heads for 4 query heads, general score, sparsemax-free softmax."""
  layer = MultiHeadAttention(4, 3, 2, 5, num_kv_heads=2, head_mode="copy", head_merge="mean",
                             score="general", rngs=nnx.Rngs(0))
  p = _param_values(layer)
  x, y = np.asarray(_normal(1, (1, 3, 3))), np.asarray(_normal(2, (1, 4, 3)))
  got = np.asarray(layer(jnp.asarray(x), jnp.asarray(y)))
  q = np.einsum("lf,fhd->lhd", x[0], p["query/kernel"]) + p["query/bias"]
  k = np.einsum("lf,fhd->lhd", y[0], p["key/kernel"]) + p["key/bias"]
  v = np.einsum("lf,fhd->lhd", y[0], p["value/kernel"]) + p["value/bias"]
  want = np.zeros((3, 5))
  for i in range(3):
    heads = []
    for h in range(4):
      g = h // 2
      s = np.array([q[i, h] @ p["score_params/W"][h] @ k[j, g] for j in range(4)])
      heads.append(_np_softmax(s) @ v[:, g])
    want[i] = np.mean(heads, axis=0) @ p["out/kernel"] + p["out/bias"]
  np.testing.assert_allclose(got[0], want, atol=1e-5)


def test_hard_target_exposes_log_prob_and_argmax_when_deterministic():
  layer = MultiHeadAttention(2, 4, target="hard", rngs=nnx.Rngs(0, attention=1))
  x = _normal(0, (3, 5, 4))
  out, w, aux = layer(x, deterministic=False, return_weights=True, return_aux=True)
  chex.assert_shape([aux["log_prob"], aux["index"]], (3, 2, 5))
  picked = jnp.take_along_axis(w, aux["index"][..., None], axis=-1)[..., 0]
  chex.assert_trees_all_close(aux["log_prob"], jnp.log(picked), atol=1e-6)
  _, aux2 = layer(x, deterministic=False, return_aux=True)  # the attention stream advances
  assert not np.array_equal(aux["index"], aux2["index"])
  _, w, aux = layer(x, deterministic=True, return_weights=True, return_aux=True)
  np.testing.assert_array_equal(aux["index"], jnp.argmax(w, -1))
  with pytest.raises(ValueError, match="deterministic"):
    layer(x)


def test_attention_weight_dropout():
  layer = MultiHeadAttention(2, 4, dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
  plain = MultiHeadAttention(2, 4, rngs=nnx.Rngs(0))
  nnx.update(plain, nnx.state(layer, nnx.Param))
  x = _normal(0, (2, 6, 4))
  chex.assert_trees_all_close(layer(x, deterministic=True), plain(x), atol=1e-6)
  a, b = layer(x, deterministic=False), layer(x, deterministic=False)
  assert np.all(np.isfinite(a)) and not np.allclose(a, b)
  assert not np.allclose(a, plain(x))
  with pytest.raises(ValueError, match="deterministic"):
    layer(x)
  # Inverted dropout is unbiased: the mean of the dropped weights is the weights.
  w = jax.nn.softmax(_normal(3, (4, 6)))
  dropped = jax.vmap(lambda r: _dropout.dropout_weights(w, r, 0.3))(
      jax.random.split(jax.random.key(4), 4000))
  chex.assert_trees_all_close(dropped.mean(0), w, atol=0.02)
  assert np.allclose(np.asarray(dropped)[(np.asarray(dropped) != 0)].size / dropped.size, 0.7,
                     atol=0.01)


@pytest.mark.parametrize("num_kv_heads,head_mode", [(None, "split"), (1, "split"), (2, "copy")])
def test_decode_cache_equals_full_causal_pass(num_kv_heads, head_mode):
  b, length, d = 2, 5, 8
  layer = MultiHeadAttention(4, d, num_kv_heads=num_kv_heads, head_mode=head_mode,
                             rngs=nnx.Rngs(0), decode=False)
  x = _normal(1, (b, length, d))
  full = layer(x, is_causal=True)
  layer.init_cache((b, length, d))
  steps = [layer(x[:, t:t + 1], decode=True) for t in range(length)]
  chex.assert_trees_all_close(jnp.concatenate(steps, axis=1), full, atol=1e-5)
  assert int(layer.cache_index[...]) == length
  view = nnx.view(MultiHeadAttention(4, d, num_kv_heads=num_kv_heads, head_mode=head_mode,
                                     rngs=nnx.Rngs(0), decode=False),
                  decode=True, batch_size=b, max_length=length)  # flax's set_view route
  step = nnx.jit(lambda m, t: m(t))
  steps = [step(view, x[:, t:t + 1]) for t in range(length)]
  chex.assert_trees_all_close(jnp.concatenate(steps, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("score", ["dot", "additive", "cosine"])
def test_other_scores_and_normalizers_run(score):
  layer = MultiHeadAttention(2, 4, score=score, normalizer="sparsemax", rngs=nnx.Rngs(0))
  out, w = layer(_normal(0, (2, 3, 4)), return_weights=True)
  assert out.shape == (2, 3, 4) and np.all(np.isfinite(out))
  chex.assert_trees_all_close(w.sum(-1), jnp.ones((2, 2, 3)), atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_heads=3, in_features=8), "num_heads"),
    (dict(num_heads=4, in_features=8, num_kv_heads=3), "num_kv_heads"),
    (dict(num_heads=2, in_features=8, head_mode="shared"), "head_mode.*'split', 'copy'"),
    (dict(num_heads=2, in_features=8, head_merge="sum"), "head_merge.*'concat', 'mean'"),
    (dict(num_heads=2, in_features=8, score="nope"), "score.*scaled_dot"),
    (dict(num_heads=2, in_features=8, normalizer="nope"), "normalizer.*softmax"),
    (dict(num_heads=2, in_features=8, target="nope"), "target.*soft"),
    (dict(num_heads=2, in_features=8, dropout_rate=1.5), "dropout_rate"),
])
def test_mha_bad_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))


def test_copy_mode_allows_heads_not_dividing_features():
  layer = MultiHeadAttention(3, 8, head_mode="copy", rngs=nnx.Rngs(0))
  assert layer(_normal(0, (1, 2, 8))).shape == (1, 2, 8)


# ------------------------------------------------------------------------- GraphAttention --------

GRAPH_SCORES = ["additive", "gatv2", "dot", "scaled_dot", "general", "uniform"]
# 6 nodes, (source, target) pairs: no duplicates; node 4 -> 4 is an existing self loop and node 5
# has no incoming edge except its self loop.
EDGES = np.array([[0, 1, 2, 3, 4, 1, 2, 3, 4, 0, 5],
                  [1, 2, 3, 4, 0, 0, 0, 0, 4, 3, 2]])


def _leaky(z, slope=0.2):
  return z if z > 0 else slope * z


def _np_edge_score(name, p, k, hi, hj):
  """Score of the edge j -> i for head k, by the papers' formulas (i = target, j = source)."""
  if name == "additive":  # GAT: LeakyReLU(aᵀ [W h_i ‖ W h_j])
    a = np.concatenate([p["score_params/a_dst"][k], p["score_params/a_src"][k]])
    return _leaky(a @ np.concatenate([hi, hj]))
  if name == "gatv2":  # aᵀ LeakyReLU(W h_i + W h_j)
    return p["score_params/a"][k] @ np.array([_leaky(z) for z in hi + hj])
  if name == "dot":
    return hi @ hj
  if name == "scaled_dot":
    return hi @ hj / np.sqrt(hi.size)
  if name == "general":
    return hi @ p["score_params/W"][k] @ hj
  if name == "uniform":
    return 0.0
  raise ValueError(name)


def _np_gat(layer, x, edges, self_loops=True):
  """A plain NumPy GAT layer with explicit loops over nodes, heads and in-neighbours."""
  p = _param_values(layer)
  n, heads, f = x.shape[0], layer.num_heads, layer.out_features
  h = np.einsum("nf,fhd->nhd", x, p["kernel"])
  out = np.zeros((n, heads, f))
  for i in range(n):
    if self_loops:  # existing self loops are replaced by exactly one per node
      nbrs = [j for j, t in zip(*edges) if t == i and j != i] + [i]
    else:  # the graph as given
      nbrs = [j for j, t in zip(*edges) if t == i]
    for k in range(heads):
      if nbrs:
        s = np.array([_np_edge_score(layer.score, p, k, h[i, k], h[j, k]) for j in nbrs])
        out[i, k] = _np_softmax(s) @ h[nbrs, k]
  merged = out.reshape(n, heads * f) if layer.head_merge == "concat" else out.mean(1)
  return merged + p.get("bias", 0.0)


@pytest.fixture(scope="module")
def graph_x():
  return np.asarray(_normal(7, (6, 5)))


@pytest.mark.parametrize("score", GRAPH_SCORES)
@pytest.mark.parametrize("merge", ["concat", "mean"])
def test_gat_edge_list_equals_dense_and_numpy(score, merge, graph_x):
  layer = GraphAttention(5, 3, 2, score=score, head_merge=merge, rngs=nnx.Rngs(0))
  nnx.update(layer, jax.tree.map(lambda v: v + 0.1, nnx.state(layer, nnx.Param)))  # nonzero bias
  x = jnp.asarray(graph_x)
  out_e, w = layer(x, EDGES, return_weights=True)
  out_d = layer(x, adjacency=_edges.edges_to_adjacency(EDGES, 6))
  out_p = layer(x, jnp.asarray(_edges.prepare_edges(EDGES, 6)), edges_prepared=True)
  inc = _edges.edge_incidence(EDGES, 6)
  out_i, w_i = layer(x, inc, return_weights=True)
  want = _np_gat(layer, graph_x, EDGES)
  assert np.all(np.isfinite(out_e))
  np.testing.assert_allclose(out_e, want, atol=1e-5)
  np.testing.assert_allclose(out_d, want, atol=1e-5)
  np.testing.assert_allclose(out_p, want, atol=1e-5)
  np.testing.assert_allclose(out_i, want, atol=1e-5)
  batch = graph_batch.build(graph_x, EDGES)  # the typed batch: its incidence, for any layer index
  np.testing.assert_allclose(layer(x, batch, layer=1), want, atol=1e-5)
  sums_i = jax.ops.segment_sum(w_i["alpha"], w_i["edges"][1], num_segments=6)
  np.testing.assert_allclose(sums_i, np.ones((6, 2)), atol=1e-6)
  # Sparse features as a SparseMatrix (the incidence matmul) give the dense projection.
  rows, cols = np.nonzero(graph_x)
  x_s = _segments.SparseMatrix(jnp.asarray(graph_x[rows, cols]), _segments.incidence(rows, cols, 6, 5))
  np.testing.assert_allclose(layer(x_s, inc), want, atol=1e-5)
  # An incidence for the first 3 nodes only (a computation-subgraph layer): their rows, nothing more.
  first = _edges.edge_incidence(EDGES[:, EDGES[1] < 3], 6, num_out=3)
  np.testing.assert_allclose(layer(x, first), want[:3], atol=1e-5)
  # The weights of each node's incoming edges sum to one (masked duplicate self loop: zero).
  sums = jax.ops.segment_sum(w["alpha"], w["edges"][1], num_segments=6)
  chex.assert_trees_all_close(sums, jnp.ones((6, 2)), atol=1e-6)


def test_gat_without_self_loops_isolated_node_gets_bias_only(graph_x):
  layer = GraphAttention(5, 3, 2, add_self_loops=False, rngs=nnx.Rngs(0))
  nnx.update(layer, jax.tree.map(lambda v: v + 0.1, nnx.state(layer, nnx.Param)))
  out = layer(jnp.asarray(graph_x), EDGES)
  np.testing.assert_allclose(out, _np_gat(layer, graph_x, EDGES, self_loops=False), atol=1e-5)
  np.testing.assert_allclose(out[5], np.full(6, 0.1), atol=1e-6)  # node 5: no in-edges
  dense = layer(jnp.asarray(graph_x), adjacency=_edges.edges_to_adjacency(EDGES, 6))
  np.testing.assert_allclose(dense, out, atol=1e-5)


def test_gat_hand_computed_four_node_example():
  """One head, F' = 2, W = I: the GAT formula for node 1 (in-edges 0, 2, 3 and its self loop)."""
  layer = GraphAttention(2, 2, 1, use_bias=False, rngs=nnx.Rngs(0))
  a_dst, a_src = np.array([1.0, -1.0]), np.array([0.5, 2.0])
  nnx.update(layer, nnx.State({"kernel": nnx.Param(jnp.eye(2)[:, None, :]),
                               "score_params": {"a_dst": nnx.Param(jnp.asarray(a_dst)[None]),
                                                "a_src": nnx.Param(jnp.asarray(a_src)[None])}}))
  x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]])
  edges = np.array([[0, 2, 3, 1], [1, 1, 1, 0]])  # 0->1, 2->1, 3->1, 1->0
  out = np.asarray(layer(jnp.asarray(x), edges))
  # node 1: a_dst·x1 = -1; a_src·x_j: x0 -> 0.5, x1 -> 2, x2 -> 2.5, x3 -> 3.5
  e = {0: -1 + 0.5, 1: -1 + 2.0, 2: -1 + 2.5, 3: -1 + 3.5}
  e = {j: v if v > 0 else 0.2 * v for j, v in e.items()}  # LeakyReLU(0.2): e_10 = -0.1
  z = sum(np.exp(v) for v in e.values())
  want1 = sum(np.exp(e[j]) / z * x[j] for j in (0, 1, 2, 3))
  np.testing.assert_allclose(out[1], want1, atol=1e-6)
  # node 0: in-edges 1 and the self loop: e_00 = LReLU(1 + 0.5) = 1.5, e_01 = LReLU(1 + 2) = 3
  alpha01 = np.exp(3.0) / (np.exp(3.0) + np.exp(1.5))
  np.testing.assert_allclose(out[0], alpha01 * x[1] + (1 - alpha01) * x[0], atol=1e-6)
  # nodes 2 and 3 have only their self loops
  np.testing.assert_allclose(out[2:], x[2:], atol=1e-6)


def test_graph_attention_gradients_and_dropout_unbiased():
  h = _normal(0, (6, 2, 3))
  edges = jnp.asarray(_edges.prepare_edges(EDGES, 6))
  params = kernels.init_graph_params("gatv2", jax.random.key(1), 3, num_heads=2)
  f = lambda h, a: kernels.graph_attention(h, edges, score="gatv2", params={"a": a},
                                           indices_are_sorted=True)
  check_grads(f, (h, params["a"]), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  clean = f(h, params["a"])
  drop = jax.vmap(lambda r: kernels.graph_attention(
      h, edges, score="gatv2", params=params, dropout_rate=0.4, rng=r))(
      jax.random.split(jax.random.key(2), 4000))
  assert not np.allclose(drop[0], clean)
  chex.assert_trees_all_close(drop.mean(0), clean, atol=0.05)
  # The incidence fast path: same outputs (dropout included: its entries keep prepare_edges'
  # order, so the same key drops the same edges), and the same gradients from its own reverse rules.
  inc = _edges.edge_incidence(EDGES, 6)
  g = lambda h, a, e, **kw: kernels.graph_attention(h, e, score="gatv2", params={"a": a}, **kw)
  for kw in ({}, dict(dropout_rate=0.4, rng=jax.random.key(3), values=jnp.cos(h))):
    np.testing.assert_allclose(g(h, params["a"], inc, **kw), g(h, params["a"], edges, **kw), atol=1e-5)
    loss = lambda h, a, e: jnp.sum(jnp.sin(g(h, a, e, **kw)))
    chex.assert_trees_all_close(jax.grad(loss, (0, 1))(h, params["a"], inc),
                                jax.grad(loss, (0, 1))(h, params["a"], edges), atol=1e-5)


def test_gat_layer_dropout_needs_deterministic_flag(graph_x):
  layer = GraphAttention(5, 3, 2, dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
  x = jnp.asarray(graph_x)
  a, b = layer(x, EDGES, deterministic=False), layer(x, EDGES, deterministic=False)
  assert np.all(np.isfinite(a)) and not np.allclose(a, b)
  np.testing.assert_allclose(layer(x, EDGES, deterministic=True), _np_gat(layer, graph_x, EDGES),
                             atol=1e-5)
  with pytest.raises(ValueError, match="deterministic"):
    layer(x, EDGES)


def test_gat_param_layout():
  p = _param_values(GraphAttention(5, 3, 4, rngs=nnx.Rngs(0)))
  assert {k: v.shape for k, v in p.items()} == {
      "kernel": (5, 4, 3), "score_params/a_dst": (4, 3), "score_params/a_src": (4, 3),
      "bias": (12,)}
  p = _param_values(GraphAttention(5, 3, 4, score="uniform", head_merge="mean", rngs=nnx.Rngs(0)))
  assert {k: v.shape for k, v in p.items()} == {"kernel": (5, 4, 3), "bias": (3,)}


@pytest.mark.parametrize("kwargs,match", [
    (dict(score="nope"), "score.*additive"),
    (dict(head_merge="sum"), "head_merge.*'concat', 'mean'"),
    (dict(num_heads=0), "num_heads"),
    (dict(dropout_rate=-0.1), "dropout_rate"),
])
def test_gat_bad_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    GraphAttention(**{"in_features": 5, "out_features": 3, **kwargs}, rngs=nnx.Rngs(0))


def test_gat_bad_inputs(graph_x):
  layer = GraphAttention(5, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="exactly one"):
    layer(jnp.asarray(graph_x))
  with pytest.raises(ValueError, match=r"\[2, E\]"):
    layer(jnp.asarray(graph_x), EDGES.T)
  with pytest.raises(ValueError, match=r"receiver ids must lie in \[0, 6\)"):
    _edges.prepare_edges(np.array([[0], [9]]), 6)
  with pytest.raises(ValueError, match=r"receiver ids must lie in \[0, 2\)"):
    _edges.prepare_edges(EDGES, 6, num_out=2)
  with pytest.raises(ValueError, match=r"num_out must lie in \[0, num_nodes=6\]"):
    _edges.edge_incidence(EDGES, 6, num_out=7)
  with pytest.raises(ValueError, match="the edge_incidence is for 6 sender and 6 receiver nodes, h has 5"):
    layer(jnp.asarray(graph_x)[:5], _edges.edge_incidence(EDGES, 6))


def test_gat_sparse_features_equal_dense(graph_x):
  from jax.experimental import sparse
  from attnlab.modules import node_dropout
  layer = GraphAttention(5, 3, 2, rngs=nnx.Rngs(0))
  x = np.where(np.abs(graph_x) > 0.8, graph_x, 0.0).astype(np.float32)
  xs = sparse.BCOO.fromdense(jnp.asarray(x))
  np.testing.assert_allclose(layer(xs, EDGES), layer(jnp.asarray(x), EDGES), atol=1e-5)
  dropped = node_dropout(xs, 0.5, jax.random.key(0)).todense()
  kept = np.asarray(dropped) != 0
  np.testing.assert_allclose(np.asarray(dropped)[kept], 2 * x[kept], rtol=1e-6)
  assert 0 < kept.sum() < (x != 0).sum()


def test_gat_value_dropout_scores_from_undropped_features(graph_x):
  """value_dropout_rate drops only the values: α is the deterministic one, and the output is an
  unbiased estimate of the deterministic output (inverted dropout on W h, α fixed)."""
  layer = GraphAttention(5, 3, 2, value_dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
  x = jnp.asarray(graph_x)
  clean, w_clean = layer(x, EDGES, deterministic=True, return_weights=True)
  np.testing.assert_allclose(clean, _np_gat(layer, graph_x, EDGES), atol=1e-5)
  _, w_drop = layer(x, EDGES, deterministic=False, return_weights=True)
  np.testing.assert_allclose(w_drop["alpha"], w_clean["alpha"], atol=1e-6)  # scores undropped
  # Each value is kept (scaled by 2) or zeroed: out_i = Σ_j α_ij m_j h_j, E[m_j] = 1.
  sample = nnx.jit(lambda m, x: m(x, EDGES, deterministic=False))  # advances the layer's rng
  outs = jnp.stack([sample(layer, x) for _ in range(600)])
  assert not np.allclose(outs[0], clean)
  np.testing.assert_allclose(outs.mean(0), clean, atol=0.15 * float(jnp.abs(clean).max()))
  lone = layer(x, jnp.zeros((2, 0), jnp.int32), deterministic=False)  # self loops only: out = v
  h = np.einsum("nf,fhd->nhd", graph_x, _param_values(layer)["kernel"]).reshape(6, 6)
  kept = np.asarray(lone - _param_values(layer)["bias"])
  assert np.all(np.isclose(kept, 0, atol=1e-6) | np.isclose(kept, 2 * h, atol=1e-5))


def test_graph_attention_kernel_values_argument():
  h = _normal(3, (6, 2, 3))
  v = _normal(4, (6, 2, 4))
  edges = jnp.asarray(_edges.prepare_edges(EDGES, 6))
  out, alpha = kernels.graph_attention(h, edges, score="dot", return_weights=True,
                                       indices_are_sorted=True, values=v)
  expected = np.zeros((6, 2, 4))
  for e, (j, i) in enumerate(np.asarray(edges).T):
    expected[i] += np.asarray(alpha)[e][:, None] * np.asarray(v)[j]
  np.testing.assert_allclose(out, expected, atol=1e-5)
  dense = kernels.dense_graph_attention(h, _edges.edges_to_adjacency(edges, 6), score="dot", values=v)
  np.testing.assert_allclose(dense, expected, atol=1e-5)


def test_key_padding_mask_reaches_the_kernel_unbroadcast(monkeypatch):
  """A [B, 1, 1, Lk] mask reaches kernels.attention as [B, 1, 1, Lk] (O(Lk): the blocked and ring
  kernels mask block by block), one with extra batch dims as [B·B', 1, 1, Lk], a shared one as
  [1, 1, 1, Lk]; the outputs equal those of the mask broadcast to [B, H, Lq, Lk] by hand."""
  seen = []
  attention = kernels.attention
  monkeypatch.setattr(kernels, "attention", lambda *a, mask=None, **k: (
      seen.append(None if mask is None else mask.shape), attention(*a, mask=mask, **k))[1])
  layer = MultiHeadAttention(2, 8, rngs=nnx.Rngs(0), decode=False)
  x = _normal(0, (2, 3, 6, 8))  # batch (2, 3), L = 6
  lengths = jnp.asarray([[6, 5, 4], [3, 6, 2]])
  pad = (jnp.arange(6) < lengths[..., None])[..., None, None, :]  # [2, 3, 1, 1, 6]
  shared = (jnp.arange(6) < 4)[None, None, :]  # [1, 1, 6]
  for mask, want in ((pad, (6, 1, 1, 6)), (shared, (1, 1, 1, 6))):
    got = layer(x, mask=mask, is_causal=True)
    assert seen[-1] == want
    full = layer(x, mask=jnp.broadcast_to(mask, (2, 3, 2, 6, 6)), is_causal=True)
    assert seen[-1] == (6, 2, 6, 6)
    chex.assert_trees_all_close(got, full, atol=1e-6)


def test_self_attention_projection_gradients_equal_flax():
  """Self-attention projects q, k, v in one product (here with 2 kv heads for 4 query heads); its
  parameter gradients are flax's."""
  kw = dict(num_heads=4, in_features=6, qkv_features=8, out_features=3, num_kv_heads=2, decode=False)
  ref = nnx.MultiHeadAttention(**kw, rngs=nnx.Rngs(0))
  ours = MultiHeadAttention(**kw, rngs=nnx.Rngs(1))
  nnx.update(ours, nnx.state(ref, nnx.Param))
  x = _normal(1, (2, 5, 6))
  loss = lambda m: jnp.sum(jnp.sin(m(x, is_causal=True)))
  want = nnx.to_flat_state(nnx.grad(loss)(ref))
  got = dict(nnx.to_flat_state(nnx.grad(loss)(ours)))
  for path, g in want:
    chex.assert_trees_all_close(got[path][...], g[...], atol=1e-5, rtol=1e-5)
