"""Tests of the model zoo (attnlab.models) and the shared objective (attnlab.losses)."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental import sparse

from attnlab import AttentionSpec, graph_batch, kernels, losses, registry
from attnlab.models import attention_maps

# ------------------------------------------------------------------------------- tiny tasks ---

_R = np.random.default_rng(0)
B = 8


def _reverse_batch():
  src = _R.integers(2, 8, size=(B, 5)).astype(np.int32)
  src[:2, 4] = 0  # two shorter sources (PAD at the end)
  lengths = (src != 0).sum(1)
  labels = np.zeros_like(src)
  for i, n in enumerate(lengths):
    labels[i, :n] = src[i, :n][::-1]
  return {"inputs": src, "labels": labels}


def _lm_batch():
  x = np.zeros((B, 8), np.int32)
  x[:, 0] = _R.integers(2, 12, size=B)
  for t in range(1, 8):  # a deterministic next-token rule: 2 + (3 (x - 2) + 1) mod 10
    x[:, t] = 2 + (3 * (x[:, t - 1] - 2) + 1) % 10
  return {"inputs": x[:, :-1].copy(), "labels": x[:, 1:].copy()}


def _graph_batch():
  n = 10
  ring = np.arange(n)
  edges = np.concatenate([np.stack([ring, (ring + 1) % n]), np.stack([(ring + 1) % n, ring])], 1)
  return {"graph": graph_batch.build(_R.normal(size=(n, 6)).astype(np.float32), edges),  # as served
          "labels": np.repeat(np.arange(3), [3, 3, 4]).astype(np.int32),  # homophilous segments
          "mask": np.ones(n, bool)}


TASKS = {  # family, spec, batch
    "tokens": ("classifier", {"vocab_size": 10, "seq_len": 6, "num_classes": 3},
               {"inputs": _R.integers(2, 10, size=(B, 6)).astype(np.int32),
                "label": _R.integers(0, 3, size=B).astype(np.int32)}),
    "regions": ("classifier", {"input_dim": 6, "seq_len": 4, "num_classes": 3},
                {"inputs": _R.normal(size=(B, 4, 6)).astype(np.float32),
                 "label": _R.integers(0, 3, size=B).astype(np.int32)}),
    "reverse": ("seq2seq", {"vocab_size": 8, "seq_len": 5, "label_len": 5}, _reverse_batch()),
    "lm": ("lm", {"vocab_size": 12, "seq_len": 7}, _lm_batch()),
    "graph": ("node_classifier", {"num_features": 6, "num_classes": 3, "num_nodes": 10},
              _graph_batch()),
}
TASKS["tokens"][2]["inputs"][:3, -1] = 0  # some PAD
_CLEVR = registry.get("task", "sort_of_clevr")(image_size=24, eval_size=2)
TASKS["vqa"] = ("classifier", _CLEVR.spec, _CLEVR.batch("train", 0, B, seed=0))  # images and questions

# Tiny programs (the file is compile-bound).
TINY = {"d_model": 16, "num_layers": 1, "mlp_dim": 32}
HEADS = {"num_heads": 2}
GRAPH = {"graph": True, "head_mode": "copy", "num_heads": 2}
SMALL = {**TINY, "hidden": 8, "dropout_rate": 0.0}  # a registered model's options that it takes
FAMILY_TASK = {"classifier": "tokens", "seq2seq": "reverse", "lm": "lm", "node_classifier": "graph"}
# The host model of each kind of registered category member: (model, task, options, attention fields).
HOSTS = {"score": ("encoder", "tokens", TINY, HEADS), "normalizer": ("encoder", "tokens", TINY, HEADS),
         "target": ("encoder", "tokens", TINY, HEADS),
         "graph_score": ("gat", "graph", {"hidden": 8, "dropout_rate": 0.0}, GRAPH)}


def _discovered_cases():
  """One case per registered model (task and options from its family and signature) and one per
  registered score, normaliser and target (on its kind's host model): new members need no edit here."""
  cases = {}
  for name in registry.names("model"):
    cls = registry.get("model", name)
    assert cls.family in FAMILY_TASK, f"model {name!r}: no test task for family {cls.family!r}"
    takes = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in SMALL.items() if k in takes}
    task = "vqa" if getattr(cls, "inputs", None) == "image" else FAMILY_TASK[cls.family]
    cases[f"model-{name}"] = (name, task, options,
                              GRAPH if getattr(cls, "graph_attention", False) else {}, 150, 1e-2)
  for kind, (model, task, options, base) in HOSTS.items():
    for member in registry.names(kind):
      stochastic = kind == "target" and kernels.get_target(member).stochastic
      field = "score" if kind == "graph_score" else kind
      cases[f"{kind}-{member}"] = (model, task, options, {**base, field: member},
                                   200 if stochastic else 100, 1e-2)
  return cases


# (model, task, options, attention spec fields, steps, learning rate): the discovered cases, plus
# combinations of a model's options with head modes, GQA and targets.
CASES = {
    **_discovered_cases(),
    "encoder-copy-mean-cls": ("encoder", "tokens", {**TINY, "pooling": "cls"},
                              {**HEADS, "head_mode": "copy", "head_merge": "mean"}, 100, 1e-2),
    "encoder-features-gqa-sparsemax": ("encoder", "regions", TINY, {"num_heads": 4, "num_kv_heads": 2,
                                                                    "normalizer": "sparsemax"}, 100, 1e-2),
    "seq2seq-split": ("seq2seq", "reverse", TINY, HEADS, 150, 1e-2),
    "seq2seq-copy": ("seq2seq", "reverse", TINY, {**HEADS, "head_mode": "copy"}, 150, 1e-2),
    "seq2seq-self": ("seq2seq", "reverse", {**TINY, "source": "self"}, {**HEADS, "score": "additive"},
                     150, 1e-2),
    "lm-split": ("lm", "lm", TINY, HEADS, 100, 1e-2),
    "lm-copy-general": ("lm", "lm", TINY, {**HEADS, "head_mode": "copy", "score": "general"}, 100, 1e-2),
    "gru-bahdanau-additive": ("gru_seq2seq", "reverse", {"d_model": 16, "style": "bahdanau"},
                              {"score": "additive"}, 150, 1e-2),
    **{f"gru-luong-{s}": ("gru_seq2seq", "reverse", {"d_model": 16, "style": "luong"}, {"score": s},
                          150, 1e-2) for s in ("dot", "general", "concat")},
    "vqa-cross-hard": ("vqa", "vqa", {"mode": "cross", "d_model": 16, "hidden": 16}, {"target": "hard"},
                       200, 1e-2),
    "vqa-mlp": ("vqa", "vqa", {"mode": "mlp", "channels": 8, "hidden": 16}, {}, 100, 1e-2),
    "sagan-hard-2heads": ("sagan_classifier", "vqa", {"channels": 16, "hidden": 16},
                          {"target": "hard", "num_heads": 2}, 200, 1e-2),
    "glimpse-soft": ("glimpse", "regions", {"d_model": 16}, {}, 100, 1e-2),
    "glimpse-hard": ("glimpse", "regions", {"d_model": 16}, {"target": "hard"}, 200, 1e-2),
    "glimpse-recurrent-hard_st": ("glimpse", "regions", {"d_model": 16, "query": "recurrent",
                                                         "num_glimpses": 2}, {"target": "hard_st"},
                                  200, 1e-2),
}


def _build(name, spec, options, attention=None, seed=0):
  """A model of the zoo; ``attention``: AttentionSpec fields (default: the model's kind's defaults)."""
  if not isinstance(attention, AttentionSpec):
    attention = AttentionSpec(**{**(GRAPH if name == "gat" else {}), **(attention or {})})
  return registry.get("model", name)(spec=spec, attention=attention,
                                     rngs=nnx.Rngs(seed, dropout=seed + 1, attention=seed + 2), **options)


def _init(name, spec, options, attention=None):
  """(graphdef, params, rest) of a model initialised in one compiled program (eager init is slow)."""
  holder = {}

  def init():
    graphdef, params, rest = nnx.split(_build(name, spec, options, attention), nnx.Param, ...)
    holder["graphdef"] = graphdef
    return params, rest

  params, rest = jax.jit(init)()
  return holder["graphdef"], params, rest


def _model(name, spec, options, attention=None):
  return nnx.merge(*_init(name, spec, options, attention))


def _overfit(name, task, options, attention, steps, lr):
  """Trains on one batch in one compiled program: eval-mode task loss before/after, outputs."""
  family, spec, batch = TASKS[task]
  graphdef, params, rest = _init(name, spec, options, attention)
  tx = optax.adam(lr)

  def evaluate(p, r):  # eval-mode task loss and the model's outputs (logits, aux)
    m = nnx.merge(graphdef, p, r, copy=True)
    outputs = m(batch, train=False)
    task_loss = losses.loss_and_metrics(lambda *a, **k: (outputs[0], {}), batch, family=family,
                                        train=False)[1]["loss"]
    return task_loss, outputs

  def loss_fn(p, r):
    m = nnx.merge(graphdef, p, r, copy=True)
    loss, _ = losses.loss_and_metrics(m, batch, family=family, train=True)
    return loss, nnx.state(m, nnx.Not(nnx.Param))

  @jax.jit
  def run(p, r):
    before, outputs = evaluate(p, r)

    def step(carry, _):
      p, r, o = carry
      g, r = jax.grad(loss_fn, has_aux=True)(p, r)
      u, o = tx.update(g, o, p)
      return (optax.apply_updates(p, u), r, o), None

    (p, r, _), _ = jax.lax.scan(step, (p, r, tx.init(p)), None, length=steps)
    return before, evaluate(p, r)[0], r, outputs

  before, after, rest, outputs = run(params, rest)
  return registry.get("model", name), family, spec, float(before), float(after), rest, outputs


@pytest.mark.parametrize("case", sorted(CASES))
def test_overfits_one_batch_and_shapes(case):
  name, task, options, attention, steps, lr = CASES[case]
  cls, family, spec, before, after, rest, (logits, aux) = _overfit(name, task, options, attention,
                                                                   steps, lr)
  assert cls.family == family
  out = spec.get("num_classes", spec.get("vocab_size"))
  expected = {"classifier": (B, out), "seq2seq": (B, 5, out), "lm": (B, 7, out),
              "node_classifier": (10, out)}[family]
  assert logits.shape == expected
  if attention.get("target") == "hard":
    assert aux["log_prob"].shape == (B,) and aux["entropy"].shape == (B,)
    assert np.asarray(nnx.to_pure_dict(rest)["baseline"])[1] > 0  # updated in training calls
  else:
    assert "log_prob" not in aux
  print(f"{case}: {before:.3f} -> {after:.3f}")
  assert np.isfinite(before) and np.isfinite(after)
  assert after <= 0.1 * before, f"{case}: task loss {before:.3f} -> {after:.3f} (not 90% lower)"


# ------------------------------------------------------------------------------- REINFORCE ---

def test_reinforce_estimator_is_unbiased():
  """E[∇ of the surrogate] over hard-attention samples = −∇ Σ_j α_j(θ) R(v_j) (enumeration)."""
  n, lk, d = 20000, 4, 3
  keys = jnp.asarray(_R.normal(size=(lk, d)), jnp.float32)  # [Lk, D]
  values = jnp.asarray(_R.normal(size=(lk, 2)), jnp.float32)  # [Lk, 2]
  goal = jnp.asarray([0.5, -1.0])
  reward_of = lambda z: -jnp.sum((z - goal) ** 2, -1)  # [..., 2] -> [...]
  theta = jnp.asarray([0.3, -0.2, 0.5])  # the query

  def exact(q):  # plain enumeration over the categorical α = softmax(K q)
    alpha = jax.nn.softmax(keys @ q)  # [Lk]
    return jnp.sum(alpha * reward_of(values))

  def sample(q):  # hard attention from the real kernel: rewards [N], log α_{j_i} [N]
    z, aux = kernels.attention(
        jnp.broadcast_to(q, (n, 1, 1, d)), jnp.broadcast_to(keys[:, None], (n, lk, 1, d)),
        jnp.broadcast_to(values[:, None], (n, lk, 1, 2)), score="dot", target="hard",
        rng=jax.random.key(7), return_aux=True)
    return reward_of(z[:, 0, 0]), aux["log_prob"][:, 0, 0]

  want = jax.grad(exact)(theta)
  assert float(jnp.linalg.norm(want)) > 0.1
  reward, _ = sample(theta)
  jac = jax.jacfwd(lambda q: sample(q)[1])(theta)  # [N, D]: ∇ log α_{j_i} per sample
  for baseline in (0.0, -2.0):
    got = -jax.grad(lambda q: losses.reinforce_surrogate(sample(q)[1], sample(q)[0], baseline))(theta)
    per_sample = (reward - baseline)[:, None] * jac  # [N, D]
    chex.assert_trees_all_close(got, per_sample.mean(0), rtol=1e-4, atol=1e-5)
    stderr = per_sample.std(0) / np.sqrt(n)
    assert np.all(np.abs(np.asarray(got - want)) < 4.5 * np.asarray(stderr) + 1e-4), (got, want, stderr)
  # the test can fail: without the score-function weighting the "gradient" is far off
  biased = jnp.mean(jac, 0)
  assert np.any(np.abs(np.asarray(biased - want)) > 10 * np.asarray(per_sample.std(0) / np.sqrt(n)))


def test_loss_adds_reinforce_term_and_updates_baseline_only_in_training():
  family, spec, batch = TASKS["regions"]
  model = _model("glimpse", spec, {"d_model": 8, "baseline_decay": 0.5}, {"target": "hard"})
  assert model.baseline.value_now() == 0.0
  loss, m = losses.loss_and_metrics(model, batch, family=family, train=True)
  # first update: the bias-corrected average is exactly the batch-mean reward = −mean CE
  np.testing.assert_allclose(model.baseline.value_now(), -m["loss"], rtol=1e-5)
  np.testing.assert_allclose(loss, m["loss"] + m["reinforce"] - 0.01 * m["entropy"], rtol=1e-5)
  assert m["baseline"] == 0.0 and m["entropy"] > 0
  kept = np.asarray(model.baseline[...])
  losses.loss_and_metrics(model, batch, family=family, train=False)
  np.testing.assert_array_equal(model.baseline[...], kept)
  assert not any("baseline" in path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def test_learned_baseline_is_per_example_and_regresses_the_reward():
  family, spec, batch = TASKS["vqa"]
  model = _model("vqa", spec, {"mode": "cross", "channels": 4, "conv_layers": 2, "d_model": 8,
                               "hidden": 8, "baseline": "learned"}, {"target": "hard"})
  run = nnx.jit(lambda mdl: (losses.loss_and_metrics(mdl, batch, family=family, train=False),
                             mdl(batch, train=False)))  # argmax samples; one compile, not op by op
  (loss, m), (logits, aux) = run(model)
  value = np.asarray(aux["value"])  # [B]
  assert value.shape == (B,) and np.ptp(value) > 0  # one baseline per example
  # the per-example advantage, by hand: CE per example with numpy's log-softmax
  z = np.asarray(logits, np.float64)
  ce = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1) - z[np.arange(B), batch["label"]]
  np.testing.assert_allclose(m["value_loss"], np.mean((value + ce) ** 2), rtol=1e-4)
  np.testing.assert_allclose(m["baseline"], value.mean(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss, m["loss"] + m["reinforce"] + m["value_loss"] - 0.01 * m["entropy"],
                             rtol=1e-5)
  # the value head learns from value_loss alone: its gradient does not reach the regions or question
  grads = nnx.jit(nnx.grad(lambda mdl: losses.loss_and_metrics(mdl, batch, family=family, train=False)[1]
                           ["value_loss"]))(model)
  flat = {"/".join(map(str, k)): np.abs(np.asarray(v)).sum() for k, v in nnx.to_flat_state(grads)}
  assert all(g == 0 for k, g in flat.items() if not k.startswith("value")), flat
  assert any(g > 0 for k, g in flat.items() if k.startswith("value"))
  # with sampled self-attention too, the baseline sees nothing that a sample changes
  relate = _model("vqa", spec, {"mode": "self_cross", "channels": 4, "conv_layers": 2, "d_model": 8,
                                "hidden": 8, "baseline": "learned"}, {"target": "hard"})
  sample = nnx.jit(lambda mdl: mdl(batch, train=True)[1])  # its rng streams advance per call
  a1, a2 = sample(relate), sample(relate)
  assert not np.array_equal(a1["log_prob"], a2["log_prob"])  # different samples
  np.testing.assert_array_equal(a1["value"], a2["value"])
  with pytest.raises(ValueError, match="baseline.*average.*learned"):
    _model("vqa", spec, {"baseline": "moving"}, {"target": "hard"})
  with pytest.raises(ValueError, match="baseline='learned' needs a sampling.*'soft'"):
    _model("vqa", spec, {"baseline": "learned"}, {"target": "soft"})


# -------------------------------------------------------------------------------- losses ---

class _Fixed:
  """A stand-in model returning fixed logits (tests the objective alone)."""

  def __init__(self, family, logits):
    self.family, self.logits = family, jnp.asarray(logits)

  def __call__(self, batch, *, train):
    return self.logits, {}


def _np_ce(logits, labels):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


def test_token_losses_mask_pad_against_numpy():
  logits = _R.normal(size=(3, 4, 6)).astype(np.float32)
  labels = np.array([[2, 3, 0, 0], [4, 5, 2, 3], [5, 0, 0, 0]], np.int32)
  labels_right = labels.copy()
  logits[1, :, :] = -5.0
  logits[1, np.arange(4), labels[1]] = 5.0  # example 1 entirely right
  for family in ("seq2seq", "lm"):
    loss, m = losses.loss_and_metrics(_Fixed(family, logits), {"labels": labels_right},
                                      family=family, train=False)
    mask = labels != 0
    np.testing.assert_allclose(loss, _np_ce(logits, labels)[mask].mean(), rtol=1e-5)
    right = logits.argmax(-1) == labels
    np.testing.assert_allclose(m["accuracy"], right[mask].mean(), rtol=1e-6)
    if family == "seq2seq":
      np.testing.assert_allclose(m["seq_accuracy"], np.mean([r[k].all() for r, k in zip(right, mask)]))


def test_classifier_and_node_losses_against_numpy():
  logits = _R.normal(size=(5, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1, 0], np.int32)
  loss, m = losses.loss_and_metrics(_Fixed("classifier", logits), {"label": labels},
                                    family="classifier", train=False)
  np.testing.assert_allclose(loss, _np_ce(logits, labels).mean(), rtol=1e-5)
  np.testing.assert_allclose(m["accuracy"], (logits.argmax(-1) == labels).mean())
  mask = np.array([True, False, True, False, False])
  loss, m = losses.loss_and_metrics(_Fixed("node_classifier", logits), {"labels": labels, "mask": mask},
                                    family="node_classifier", train=False)
  np.testing.assert_allclose(loss, _np_ce(logits, labels)[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(m["accuracy"], (logits.argmax(-1) == labels)[mask].mean())
  with pytest.raises(ValueError, match="family"):
    losses.loss_and_metrics(_Fixed("classifier", logits), {}, family="regression", train=False)


# ------------------------------------------------------------------------- attention maps ---

def test_attention_maps_of_one_example():
  family, spec, batch = TASKS["tokens"]
  model = _model("encoder", spec, TINY, HEADS)
  maps = attention_maps(model, batch, example=0)
  assert set(maps) == {"encoder/blocks/0/self_attn"}
  w = maps["encoder/blocks/0/self_attn"]  # [H, L, L]
  assert w.shape == (2, 6, 6)
  valid = batch["inputs"][0] != 0
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(w[..., ~valid], 0.0)  # PAD keys get no weight
  assert not nnx.state(model, nnx.Intermediate)  # nothing left behind in the model

  family, spec, batch = TASKS["reverse"]
  gru = _model("gru_seq2seq", spec, {"d_model": 8, "style": "bahdanau"}, {"score": "additive"})
  w = attention_maps(gru, batch, example=0)["attn"]  # [1, Lt, Ls]
  assert w.shape == (1, 5, 5)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(w[..., batch["inputs"][0] == 0], 0.0)

  family, spec, batch = TASKS["regions"]
  glimpse = _model("glimpse", spec, {"d_model": 8, "query": "recurrent", "num_glimpses": 3})
  assert attention_maps(glimpse, batch)["attn"].shape == (1, 3, 4)  # one row per glimpse


# --------------------------------------------------------------------------------- errors ---

BAD = [  # (model, task, options, attention spec fields or spec, the error names ...)
    ("encoder", "tokens", {"d_model": 10}, {"num_heads": 4}, "num_heads"),
    ("encoder", "tokens", {}, {"head_mode": "shared"}, "head_mode"),
    ("encoder", "tokens", {}, {"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
    ("seq2seq", "reverse", {"d_model": 12}, {"num_heads": 5}, "num_heads"),
    ("lm", "lm", {}, {"head_merge": "sum"}, "head_merge"),
    ("glimpse", "regions", {"query": "random"}, {}, "query"),
    ("gru_seq2seq", "reverse", {"style": "vaswani"}, {}, "style"),
    ("seq2seq", "reverse", {"source": "both"}, {}, "source"),
    ("encoder", "tokens", {"pooling": "max"}, {}, "pooling"),
    ("encoder", "tokens", {}, {"score": "dott"}, "score"),
    ("gat", "graph", {}, {"score": "cosine"}, "score.*registered graph scores: additive"),
    ("encoder", "tokens", {"widht": 3}, {}, r"unknown kwarg\(s\) 'widht'; valid kwargs: d_model=64"),
    ("encoder", "tokens", {"score": "dot"}, {}, r"unknown kwarg\(s\) 'score'.*attention=AttentionSpec"),
    # a model refuses a field it cannot honour instead of ignoring it
    ("gru_seq2seq", "reverse", {}, {"num_heads": 2}, r"cannot honour attention num_heads=2.*\(1\)"),
    ("gru_seq2seq", "reverse", {}, {"dropout": 0.1}, "cannot honour attention dropout=0.1"),
    ("gru_seq2seq", "reverse", {}, {"impl": "blocked"}, "cannot honour attention impl='blocked'"),
    ("gat", "graph", {}, {"normalizer": "sparsemax"}, "cannot honour attention normalizer='sparsemax'"),
    ("gat", "graph", {}, {"head_mode": "split"}, "cannot honour attention head_mode='split'.*'copy'"),
    ("gat", "graph", {}, {"target": "hard"}, "cannot honour attention target='hard'"),
    ("gat", "graph", {}, AttentionSpec(), r"model 'gat' takes graph attention.*graph=True"),
    ("encoder", "tokens", {}, AttentionSpec(graph=True), r"model 'encoder' takes sequence attention"),
    ("encoder", "tokens", {}, "scaled_dot", "attention must be an attnlab.AttentionSpec"),
]


@pytest.mark.parametrize("name,task,options,attention,match", BAD)
def test_bad_configuration_names_the_argument(name, task, options, attention, match):
  _, spec, _ = TASKS[task]
  with pytest.raises((ValueError, TypeError), match=match):
    if isinstance(attention, (dict, AttentionSpec)):
      _build(name, spec, {**({"d_model": 8} if name != "gat" else {}), **options}, attention)
    else:
      registry.get("model", name)(spec=spec, attention=attention, rngs=nnx.Rngs(0), d_model=8)


def test_registered_models_and_families():
  fams = {n: registry.get("model", n).family for n in
          ("encoder", "glimpse", "seq2seq", "gru_seq2seq", "lm", "gat")}
  assert fams == {"encoder": "classifier", "glimpse": "classifier", "seq2seq": "seq2seq",
                  "gru_seq2seq": "seq2seq", "lm": "lm", "gat": "node_classifier"}


def test_gat_refuses_subgraphs_shallower_than_its_layers():
  _, spec, _ = TASKS["graph"]
  with pytest.raises(ValueError, match=r"1-hop computation subgraphs, .* 2 message-passing layers"):
    _build("gat", {**spec, "subgraph_hops": 1}, {})
  for hops in (0, 2, 3):
    _build("gat", {**spec, "subgraph_hops": hops}, {"hidden": 2}, {**GRAPH, "num_heads": 1})


def test_gat_sparse_features_match_dense():
  """The sparse feature batch (planetoid(sparse_features=True)) gives the dense batch's logits, and
  value dropout makes training calls random but leaves evaluation deterministic."""
  _, spec, batch = TASKS["graph"]
  g = batch["graph"]
  feats = np.asarray(g.features).copy()
  feats[feats < 0.5] = 0.0  # sparse-ish
  sparse_batch = {**batch, "graph": g._replace(features=graph_batch.sparse_features(feats))}
  model = _build("gat", spec, {"hidden": 4, "value_dropout": 0.6}, {**GRAPH, "dropout": 0.6})
  call = nnx.jit(lambda m, b, train: m(b, train=train)[0], static_argnames="train")  # advances rngs
  dense_logits = call(model, {**batch, "graph": g._replace(features=feats)}, train=False)
  sparse_logits = call(model, sparse_batch, train=False)
  np.testing.assert_allclose(sparse_logits, dense_logits, atol=1e-5)
  # The model's layers on BCOO features and dense ones, over the plain edge list (no incidence).
  rows, cols = np.nonzero(feats)
  bcoo = sparse.BCOO((feats[rows, cols], np.stack([rows, cols], 1).astype(np.int32)), shape=feats.shape)
  plain = nnx.jit(lambda m, x: m.layer2(nnx.elu(m.layer1(x, g.edges, deterministic=True)), g.edges,
                                        deterministic=True))
  np.testing.assert_allclose(plain(model, bcoo), dense_logits, atol=1e-5)
  np.testing.assert_allclose(plain(model, feats), dense_logits, atol=1e-5)
  np.testing.assert_allclose(call(model, sparse_batch, train=False), sparse_logits)
  a, b = call(model, sparse_batch, train=True), call(model, sparse_batch, train=True)
  assert np.all(np.isfinite(a)) and not np.allclose(a, b)


def test_layer_norm_matches_numpy_flax_and_finite_differences():
  from attnlab.models._norm import LayerNorm, layer_norm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 3, 8)) * 2 + 1, jnp.float32)
  scale, bias = (jnp.asarray(rng.standard_normal(8), jnp.float32) for _ in range(2))
  xn = np.asarray(x, np.float64)  # the definition, plainly
  want = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-6)
  want = want * np.asarray(scale) + np.asarray(bias)
  np.testing.assert_allclose(layer_norm(x, scale, bias, 1e-6), want, rtol=1e-5, atol=1e-5)
  ref, ours = nnx.LayerNorm(8, rngs=nnx.Rngs(0)), LayerNorm(8, rngs=nnx.Rngs(0))
  ref.scale[...], ref.bias[...] = scale, bias
  nnx.update(ours, nnx.state(ref))
  np.testing.assert_allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)
  ref16, ours16 = (cls(8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)) for cls in (nnx.LayerNorm, LayerNorm))
  nnx.update(ours16, nnx.state(ref))
  nnx.update(ref16, nnx.state(ref))  # a bfloat16 compute dtype takes flax's own code
  np.testing.assert_array_equal(ours16(x), ref16(x))
  loss = lambda m, x: jnp.sum(jnp.sin(m(x)) * x)
  grads = lambda m: (lambda g: (nnx.to_pure_dict(nnx.state(g[0])), g[1]))(
      jax.grad(loss, argnums=(0, 1))(m, x))
  chex.assert_trees_all_close(grads(ours), grads(ref), atol=2e-5, rtol=2e-5)
  with jax.enable_x64(True):  # the custom backward against finite differences
    args = tuple(np.asarray(a, np.float64) for a in (x[0], scale, bias))
    jax.test_util.check_grads(lambda a, s, b: layer_norm(a, s, b, 1e-6), args, order=1,
                              modes=("rev",), atol=1e-6, rtol=1e-6)
