"""The attention spec (attnlab.AttentionSpec): one validated value from config and sweep to the kernel."""

import dataclasses
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab import AttentionSpec, registry, sweep
from attnlab import config as config_lib
from attnlab import modules
from attnlab.models import transformer

HERE = pathlib.Path(__file__).resolve().parent
TOY = str(HERE / "runner_toy.py")
ENCODER_SPEC = {"vocab_size": 10, "seq_len": 6, "num_classes": 3}


def _x(seed=0, shape=(2, 5, 8)):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _toy_model(config):
  """The toy config's model, built from the config the way the runner builds it."""
  cls = registry.get("model", config.model.name)
  return cls(spec={"input_dim": 3, "num_classes": 2, "seq_len": 6}, rngs=nnx.Rngs(0),
             **config_lib.model_kwargs(config))


def _sweep(axes):
  import ml_collections  # pylint: disable=g-import-not-at-top
  s = ml_collections.ConfigDict()
  s.name, s.seeds = "spec", (0,)
  s.grids = [{"group": "g", "config": TOY, "axes": axes}]
  return s


# ------------------------------------------------------------------ the value itself --------

def test_spec_is_frozen_hashable_and_round_trips():
  spec = AttentionSpec(score="additive", score_kwargs={"hidden": 16}, normalizer="sigmoid",
                       normalizer_kwargs={"bias": -2.0}, num_heads=4, num_kv_heads=2)
  same = AttentionSpec.from_config(spec.to_dict())
  assert same == spec and hash(same) == hash(spec) and len({spec, same}) == 1
  assert spec.to_dict()["score_kwargs"] == {"hidden": 16} and dict(spec.normalizer_kwargs) == {"bias": -2.0}
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.score = "dot"
  with pytest.raises(TypeError):
    spec.score_kwargs["hidden"] = 8  # read-only
  assert spec.replace(num_heads=8).num_heads == 8 and spec.num_heads == 4
  with pytest.raises(ValueError, match="num_kv_heads: 2 must divide num_heads \\(3\\)"):
    spec.replace(num_heads=3)  # replace checks again
  assert AttentionSpec(dropout=0).dropout == 0.0 and isinstance(AttentionSpec(dropout=0).dropout, float)


@pytest.mark.parametrize("fields, match", [
    (dict(score="dott"), r"AttentionSpec.score: unknown score 'dott'; registered scores: additive"),
    (dict(graph=True, score="cosine"), "unknown graph score 'cosine'; registered graph scores: additive"),
    (dict(normalizer="nope"), "normalizer: unknown normalizer 'nope'; .*entmax15.*softmax"),
    (dict(target="nope"), "target: unknown target 'nope'; .*hard_st.*soft"),
    (dict(head_mode="shared"), "head_mode: unknown value 'shared'; valid choices: 'split', 'copy'"),
    (dict(head_merge="sum"), "head_merge: unknown value 'sum'; valid choices: 'concat', 'mean'"),
    (dict(impl="fast"), "impl: unknown value 'fast'; valid choices: 'auto', 'dense', 'blocked', 'ring'"),
    (dict(num_heads=0), "num_heads: must be a positive int, got 0"),
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads: 3 must divide num_heads"),
    (dict(dropout=1.0), r"dropout: must be a float in \[0, 1\)"),
    (dict(score="additive", score_kwargs={"hiden": 8}),
     r"score_kwargs.hiden: unknown option of score 'additive'; its options: hidden \(default None\)"),
    (dict(score_kwargs={"hidden": 8}),
     "score_kwargs.hidden: unknown option of score 'scaled_dot'; it takes no options"),
    (dict(normalizer="sigmoid", normalizer_kwargs={"b": 1.0}),
     r"normalizer_kwargs.b: unknown option of normalizer 'sigmoid'; its options: bias \(default None\)"),
    (dict(target="hard_st", target_kwargs={"temp": 2.0}),
     r"target_kwargs.temp: .*hard_st'; its options: temperature \(default 1.0\)"),
    (dict(target_kwargs={"dropout_rate": 0.5}),
     "target_kwargs.dropout_rate: unknown option of target 'soft'"),
    (dict(graph=True, score="additive", score_kwargs={"hidden": 8}),
     "score_kwargs.hidden: unknown option of graph score 'additive'; it takes no options"),
    (dict(normalizer="sigmoid", normalizer_kwargs={"bias": {"a": 1}}),
     "normalizer_kwargs.bias: must be a constant"),
])
def test_bad_field_is_refused_naming_it_and_the_valid_choices(fields, match):
  with pytest.raises(ValueError, match=match):
    AttentionSpec(**fields)


def test_from_config_refuses_unknown_fields_naming_the_fields():
  with pytest.raises(ValueError, match="AttentionSpec.scor: unknown field; the fields are score, norm"):
    AttentionSpec.from_config({"scor": "dot"})
  assert AttentionSpec.from_config({"score": "dot"}) == AttentionSpec(score="dot")  # the rest default


# ------------------------------------------------ from config, sweep and command line ------

def test_nested_kwarg_from_a_config_override_reaches_the_kernel():
  """sigmoid's bias set as model.attention.normalizer_kwargs.bias changes the kernel's weights exactly:
  w_b = σ(logit(w_0) + b) for the same parameters."""
  weights = {}
  for bias in (0.0, -2.0):
    c = config_lib.load_file(TOY)
    config_lib.set_dotted(c, "model.attention.normalizer", "sigmoid")
    config_lib.set_dotted(c, "model.attention.normalizer_kwargs.bias", bias)  # a new key: allowed here
    config_lib.validate(c)
    model = _toy_model(c)
    assert dict(model.attn.attention.normalizer_kwargs) == {"bias": bias}
    _, weights[bias] = model.attn(_x(shape=(2, 5, 8)), return_weights=True)
  w0 = np.asarray(weights[0.0], np.float64)
  np.testing.assert_allclose(weights[-2.0], 1 / (1 + np.exp(-(np.log(w0 / (1 - w0)) - 2.0))), rtol=2e-5)
  c = config_lib.load_file(TOY)  # and a config without the option: the default bias -log(Lk)
  config_lib.set_dotted(c, "model.attention.normalizer", "sigmoid")
  _, default = _toy_model(c).attn(_x(shape=(2, 5, 8)), return_weights=True)
  np.testing.assert_allclose(default, 1 / (1 + 5 * (1 - w0) / w0), rtol=2e-5)


def test_nested_kwarg_from_a_sweep_axis_reaches_the_kernel():
  runs = sweep.expand(_sweep({"model.attention.score": ["additive"],
                              "model.attention.score_kwargs.hidden": [2, 16]}))
  assert [r.point["model.attention.score_kwargs.hidden"] for r in runs] == [2, 16]
  assert sweep.label(runs[1].point) == "score=additive, score_kwargs.hidden=16"
  shapes = [_toy_model(r.config).attn.score_params["W_q"].shape for r in runs]
  assert shapes == [(2, 4, 2), (2, 4, 16)]  # [H, D, hidden]; without the option hidden = D = 4
  c = config_lib.load_file(TOY)
  config_lib.set_dotted(c, "model.attention.score", "additive")
  assert _toy_model(c).attn.score_params["W_q"].shape == (2, 4, 4)


@pytest.mark.parametrize("axes, match", [
    ({"model.attention.score": ["additive"], "model.attention.score_kwargs.hiden": [4]},
     r"model.attention.score_kwargs.hiden: unknown option of score 'additive'; its options: hidden"),
    ({"model.attention.normalizer_kwargs.bias": [-1.0]},
     "model.attention.normalizer_kwargs.bias: unknown option of normalizer 'softmax'; it takes no options"),
    ({"model.attention.heads": [2]}, r"unknown key 'model.attention.heads'.*valid: .*num_heads"),
])
def test_sweep_refuses_unknown_kwargs_and_fields_before_running(axes, match):
  with pytest.raises(ValueError, match=match):
    sweep.expand(_sweep(axes))


def test_every_field_is_settable_and_recorded_in_the_config():
  c = config_lib.load_file(TOY)
  for key, value in {"score": "general", "normalizer": "entmax15", "target": "hard_st",
                     "head_mode": "copy", "head_merge": "mean", "num_heads": 4, "num_kv_heads": 2,
                     "dropout": 0.1, "impl": "dense", "target_kwargs.temperature": 0.5}.items():
    config_lib.set_dotted(c, f"model.attention.{key}", value)
  spec = config_lib.attention_spec(c)
  assert spec == AttentionSpec(score="general", normalizer="entmax15", target="hard_st", head_mode="copy",
                               head_merge="mean", num_heads=4, num_kv_heads=2, dropout=0.1, impl="dense",
                               target_kwargs={"temperature": 0.5})
  assert config_lib.to_dict(c)["model"]["attention"] == spec.to_dict()  # config.json holds the spec
  assert c.copy_and_resolve_references().model.attention.target_kwargs.temperature == 0.5


# --------------------------------------------------- validated once, passed unchanged --------

def test_layers_inside_a_model_hold_the_very_spec_and_do_not_check_it_again(monkeypatch):
  spec = AttentionSpec(score="additive", normalizer="sparsemax", num_heads=2, num_kv_heads=1,
                       score_kwargs={"hidden": 4})
  calls = []
  original = AttentionSpec.validate
  monkeypatch.setattr(AttentionSpec, "validate", lambda self: calls.append(self) or original(self))
  model = registry.get("model", "seq2seq")(
      spec={"vocab_size": 8, "seq_len": 5, "label_len": 5}, attention=spec, rngs=nnx.Rngs(0),
      d_model=8, num_layers=2)
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, modules.MultiHeadAttention)]
  assert len(layers) == 6  # 2 encoder self, 2 decoder self + 2 cross
  assert all(layer.attention is spec for layer in layers) and not calls
  assert {layer.score_params["W_q"].shape for layer in layers} == {(2, 4, 4)}
  gru = registry.get("model", "gru_seq2seq")(spec={"vocab_size": 8}, rngs=nnx.Rngs(0), d_model=8,
                                             attention=AttentionSpec(score="concat"))
  assert gru.attn.attention.score == "concat" and len(calls) == 1  # only the spec made here


def test_gat_hidden_layer_holds_the_spec_and_the_output_layer_its_replacement():
  spec = AttentionSpec(graph=True, score="gatv2", num_heads=3, head_mode="copy", head_merge="mean",
                       dropout=0.25)
  gat = registry.get("model", "gat")(spec={"num_features": 5, "num_classes": 2}, attention=spec,
                                     rngs=nnx.Rngs(0), hidden=4, output_heads=2)
  assert gat.layer1.attention is spec
  assert gat.layer2.attention == spec.replace(num_heads=2, head_merge="mean")
  assert gat.layer2.in_features == 4  # head_merge="mean" on the hidden layer: [N, hidden]


# ---------------------------------------------------------- short form and spec form --------

def test_mha_short_form_and_spec_form_are_the_same_layer():
  kw = dict(score="additive", normalizer="entmax15", target="hard_st", head_mode="copy",
            head_merge="mean", num_kv_heads=1, score_kwargs={"hidden": 5},
            target_kwargs={"temperature": 0.5}, dropout_rate=0.2)
  short = modules.MultiHeadAttention(2, 8, 6, 3, rngs=nnx.Rngs(0, attention=1), **kw)
  spec = AttentionSpec(score="additive", normalizer="entmax15", target="hard_st", head_mode="copy",
                       head_merge="mean", num_heads=2, num_kv_heads=1, score_kwargs={"hidden": 5},
                       target_kwargs={"temperature": 0.5}, dropout=0.2)
  long = modules.MultiHeadAttention(2, 8, 6, 3, attention=spec, rngs=nnx.Rngs(0, attention=1))
  assert short.attention == spec and long.attention is spec
  chex.assert_trees_all_equal(nnx.state(short, nnx.Param), nnx.state(long, nnx.Param))
  x = _x()
  for train in (False, True):  # the training call samples (hard_st) and drops: same streams
    a = short(x, deterministic=not train, return_weights=True)
    b = long(x, deterministic=not train, return_weights=True)
    chex.assert_trees_all_equal(a, b)


def test_graph_attention_short_form_and_spec_form_are_the_same_layer():
  short = modules.GraphAttention(5, 3, 2, score="general", head_merge="mean", dropout_rate=0.1,
                                 rngs=nnx.Rngs(0))
  spec = AttentionSpec(graph=True, score="general", num_heads=2, head_mode="copy", head_merge="mean",
                       dropout=0.1)
  long = modules.GraphAttention(5, 3, attention=spec, rngs=nnx.Rngs(0))
  assert short.attention == spec and long.attention is spec
  x, adj = _x(shape=(4, 5)), jnp.ones((4, 4), bool)
  chex.assert_trees_all_equal(short(x, adjacency=adj, deterministic=True),
                              long(x, adjacency=adj, deterministic=True))


@pytest.mark.parametrize("make, match", [
    (lambda s: modules.MultiHeadAttention(2, 8, attention=s.replace(num_heads=4), rngs=nnx.Rngs(0)),
     r"num_heads=2 differs from attention.num_heads=4"),
    (lambda s: modules.MultiHeadAttention(2, 8, score="dot", attention=s, rngs=nnx.Rngs(0)),
     "either as keywords or as attention=.*not both; got attention= and score='dot'"),
    (lambda s: modules.MultiHeadAttention(2, 8, dropout_rate=0.1, attention=s, rngs=nnx.Rngs(0)),
     "not both; got attention= and dropout_rate=0.1"),
    (lambda s: modules.MultiHeadAttention(2, 8, attention=s.to_dict(), rngs=nnx.Rngs(0)),
     "attention must be an attnlab.AttentionSpec, got dict"),
    (lambda s: modules.MultiHeadAttention(2, 8, attention=AttentionSpec(graph=True, num_heads=2),
                                          rngs=nnx.Rngs(0)), "graph attention spec.*use GraphAttention"),
    (lambda s: modules.MultiHeadAttention(2, 8, score_kwargs={"hidden": 3}, rngs=nnx.Rngs(0)),
     "MultiHeadAttention: score_kwargs.hidden: unknown option of score 'scaled_dot'"),
    (lambda s: modules.GraphAttention(5, 3, attention=s, rngs=nnx.Rngs(0)),
     "GraphAttention: attention must be a graph attention spec"),
    (lambda s: modules.GraphAttention(5, 3, 2, attention=AttentionSpec(graph=True, head_mode="copy"),
                                      rngs=nnx.Rngs(0)), "not both; got attention= and num_heads=2"),
    (lambda s: modules.GraphAttention(
        5, 3, attention=AttentionSpec(graph=True, head_mode="copy", impl="dense"), rngs=nnx.Rngs(0)),
     r"GraphAttention cannot honour attention impl='dense'; it supports impl in \('auto'\)"),
])
def test_spec_form_errors_name_the_conflict(make, match):
  with pytest.raises((ValueError, TypeError), match=match):
    make(AttentionSpec(num_heads=2))


def test_attention_layer_of_the_transformer_models_takes_the_spec():
  spec = AttentionSpec(num_heads=2, normalizer="sigmoid", normalizer_kwargs={"bias": -1.0})
  layer = transformer.attention_layer(8, spec, rngs=nnx.Rngs(0), in_kv_features=6)
  assert layer.attention is spec and layer.key.in_features == (6,)


@pytest.mark.parametrize("head_mode,heads,head_dim", [("split", 2, 12), ("copy", 2, 24), ("split", 1, 24)])
def test_qkv_features_sets_the_head_dimension_apart_from_d_model(head_mode, heads, head_dim):
  cls = registry.get("model", "encoder")
  model = cls(spec=ENCODER_SPEC, rngs=nnx.Rngs(0), d_model=8, num_layers=1, qkv_features=24,
              attention=AttentionSpec(num_heads=heads, head_mode=head_mode))
  attn = model.encoder.blocks[0].self_attn
  assert attn.head_dim == head_dim and attn.query.kernel.shape == (8, heads, head_dim)
  logits, _ = model({"inputs": jnp.ones((2, 6), jnp.int32)}, train=False)
  assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))


def test_qkv_features_that_the_split_heads_cannot_divide_is_refused_naming_both():
  cls = registry.get("model", "encoder")
  with pytest.raises(ValueError, match=r"model.attention.num_heads \(4\) must divide qkv_features \(6\)"):
    cls(spec=ENCODER_SPEC, rngs=nnx.Rngs(0), d_model=8, qkv_features=6, attention=AttentionSpec(num_heads=4))
