"""The learning-rate grid (one vmapped program of rates × seeds), learning-speed measures, sparsity."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab import (config as config_lib, modules, parallel, report, results, sparsity, steps, sweep, train,
                     tuning)
from attnlab.models import attention_maps, sow_enabled
from attnlab.rundata import RunData
from tests.test_runner import TOY, toy_config, toy_sweep

RATES = (0.02, 0.1)


def tuned_config(rates=RATES, lr=0.02):
  c = toy_config(48, eval_every=4, checkpoint_every=0)
  c.train.early_stopping.patience = 2
  c.train.early_stopping.metrics = "loss"
  c.optim.warmup_steps, c.optim.schedule = 4, "cosine"  # the injected rate scales the schedule
  c.optim.learning_rates, c.optim.learning_rate = rates, lr
  c.train.reach_value = 0.8
  return c


def _lines(d, split):
  lines = map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
  return [line for line in lines if line["split"] == split]


@pytest.fixture(scope="module")
def grid_and_alone(tmp_path_factory):
  d = tmp_path_factory.mktemp("grid")
  grid = train.train_and_evaluate(tuned_config(), str(d / "grid"))
  alone = [train.train_and_evaluate(tuned_config((), lr), str(d / f"alone{r}")) for r, lr in enumerate(RATES)]
  return grid, d / "grid", alone, [d / f"alone{r}" for r in range(len(RATES))]


def test_grid_members_train_as_each_rate_alone(grid_and_alone):
  grid, grid_dir, alone, alone_dirs = grid_and_alone
  per_rate = grid["tuning"]["per_rate"]
  for r, (one, one_dir) in enumerate(zip(alone, alone_dirs)):
    assert per_rate[r]["learning_rate"] == RATES[r]
    for key in ("best_step", "stopped_at", "reach_step", "status"):  # early stopping per (rate, seed)
      assert per_rate[r][key] == one[key], key
    np.testing.assert_allclose(per_rate[r]["auc"], one["auc"], rtol=1e-6)
    for split in ("val", "test"):
      for metric in ("loss", "accuracy"):
        np.testing.assert_allclose(per_rate[r]["metrics"][split][metric]["per_seed"],
                                   one["metrics"][split][metric]["per_seed"], rtol=2e-5, atol=1e-6)
    for split in ("train", "val"):  # every logged step: members r·S .. r·S+S-1 are this rate's seeds
      a = _lines(one_dir, split)  # it ends when its seeds have stopped; the grid may go on
      g = _lines(grid_dir, split)[:len(a)]
      assert [line["step"] for line in g] == [line["step"] for line in a] and len(a) >= 3
      np.testing.assert_allclose([line["loss"][2 * r:2 * r + 2] for line in g], [line["loss"] for line in a],
                                 rtol=2e-5, atol=1e-6)
  stops = per_rate[0]["stopped_at"] + per_rate[1]["stopped_at"]
  assert min(stops) < 48 and len(set(stops)) > 1  # members stopped at different steps


def test_grid_result_reports_the_val_chosen_rate(grid_and_alone):
  grid, grid_dir, _, _ = grid_and_alone
  per_rate, tuned = grid["tuning"]["per_rate"], grid["tuning"]
  val = [np.mean(p["metrics"]["val"]["accuracy"]["per_seed"]) for p in per_rate]
  chosen = int(np.argmax(val))
  assert tuned["chosen"] == chosen and grid["learning_rate"] == RATES[chosen] and tuned["at_edge"]
  assert grid["metrics"] == per_rate[chosen]["metrics"] and grid["auc"] == per_rate[chosen]["auc"]
  assert grid["reach"] == {"metric": "accuracy", "value": 0.8}
  assert len(grid["attention_sparsity"]) == 2 and all(z == 0.0 for z in grid["attention_sparsity"])
  text = train.format_result(grid)
  assert f"learning rate {RATES[chosen]:g} chosen on val accuracy from (0.02, 0.1): at the edge" in text
  assert (grid_dir / "attention.npz").exists()


def test_grid_program_params_equal_each_rate_alone():
  """The compiled programs themselves: a rate grid's members end with the same parameters.

  SGD, not Adam: the key projection's bias has a gradient of pure rounding noise (softmax ignores a
  shift of its row), which Adam would scale up to full steps."""
  cfg = tuned_config()
  cfg.optim.name = "sgd"
  cfg.train.early_stopping.patience = 0
  task = train.make_task(cfg)
  data = RunData(task, cfg, [0, 1], parallel.make_mesh())

  def trained(rates):
    cfg.optim.learning_rates, cfg.optim.learning_rate = (rates, 0.5) if len(rates) > 1 else ((), rates[0])
    prog, keys, lrs = train.programs(cfg, task, train.model_class(cfg, task), data)
    params, rest, opt = prog.init(keys, lrs)
    es = prog.es_init(params, rest, 12)
    params, *_ = prog.train_chunk(params, rest, opt, es, data.train(0, 12, 12), jnp.ones((12,), bool), 0)
    return params

  grid = trained(RATES)
  for r, lr in enumerate(RATES):
    alone = trained((lr,))
    jax.tree.map(lambda g, a: np.testing.assert_allclose(g[2 * r:2 * r + 2], a, rtol=2e-5, atol=1e-6),
                 grid, alone)
  apart = max(float(np.abs(leaf[0] - leaf[2]).max()) for leaf in jax.tree.leaves(grid))
  assert apart > 1e-3  # the two rates did train differently


def test_follow_curve_on_a_synthetic_curve():
  curve = [0.50, 0.70, 0.96, 0.94, 0.97, 0.99]  # evaluated at steps 10, 20, ...
  es = {**steps.curve_init(3), "active": jnp.ones((3,), bool)}
  # member 0: threshold 0.95, stops after its 4th evaluation; 1: never reaches 0.995; 2: loss <= 0.35
  for i, value in enumerate(curve):
    step = 10 * (i + 1)
    new = [steps.follow_curve({k: v[m:m + 1] for k, v in es.items()}, jnp.asarray([x], jnp.float32),
                              step, minimise=mini, reach_value=rv)
           for m, (x, mini, rv) in enumerate([(value, False, 0.95), (value, False, 0.995),
                                               (1 - value, True, 0.35)])]
    es = {**{k: jnp.concatenate([n[k] for n in new]) for k in new[0]},
          "active": jnp.asarray([i < 3, True, True])}
  assert np.asarray(es["reach_step"]).tolist() == [30, -1, 20]
  # 8 evaluations in the budget: member 0 holds 0.94 (its last) for the 4 after it stopped
  assert tuning.auc(float(es["curve_sum"][0]), int(es["curve_n"][0]), float(es["curve_last"][0]), 8) == \
      pytest.approx((0.5 + 0.7 + 0.96 + 0.94 * 5) / 8, rel=1e-6)
  assert tuning.auc(float(es["curve_sum"][1]), int(es["curve_n"][1]), float(es["curve_last"][1]), 6) == \
      pytest.approx(np.mean(curve), rel=1e-6)
  assert tuning.auc(0.0, 0, math.nan, 8) is None  # never evaluated (diverged before)


def test_choose_prefers_fewer_divergences_then_the_best_val_mean():
  assert tuning.choose([[0.5, 0.7], [0.9, 0.8], [0.9, 0.8]], "accuracy") == 1  # ties: the earlier
  assert tuning.choose([[0.5, 0.7], [0.99, None]], "accuracy") == 0  # a diverged seed counts first
  assert tuning.choose([[0.3, 0.4], [0.2, 0.2]], "loss") == 1
  assert tuning.choose([[None, None], [None, None]], "accuracy") == 0
  assert tuning.at_edge(0, 3) and tuning.at_edge(2, 3) and not tuning.at_edge(1, 3)
  assert not tuning.at_edge(0, 1)


class SparseToy(nnx.Module):
  """One attention layer over 6 tokens, normaliser chosen (runner_toy's task)."""
  family = "classifier"

  def __init__(self, normalizer, seed):
    rngs = nnx.Rngs(seed)
    self.embed = nnx.Linear(3, 8, rngs=rngs)
    self.attn = modules.MultiHeadAttention(2, 8, normalizer=normalizer, rngs=rngs)
    self.out = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, batch, *, train):
    h = self.attn(self.embed(batch["inputs"]), deterministic=True, sow_weights=sow_enabled())
    return self.out(h.mean(1)), {}


@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
def test_zero_fractions_count_the_attention_maps_zeros(normalizer):
  task = train.make_task(config_lib.load_file(TOY))  # (loading it registers the toy task)
  val = task.batch("val", 0, 16)
  models = [SparseToy(normalizer, seed) for seed in (0, 1, 2)]
  graphdef, *_ = nnx.split(models[0], nnx.Param, ...)
  states = [nnx.split(m, nnx.Param, ...)[1:] for m in models]
  params, rest = (jax.tree.map(lambda *x: jnp.stack(x), *[s[i] for s in states]) for i in (0, 1))
  batches = {k: jnp.asarray(v)[None] for k, v in val.items()}  # [nb=1, B, ...], shared by members
  got = sparsity.zero_fractions(graphdef, params, rest, batches, start=1, count=2, shared=True,
                                family="classifier", max_examples=10)
  want = [np.mean([np.mean(w == 0) for i in range(10) for w in attention_maps(m, val, example=i).values()])
          for m in models[1:]]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert (got > 0.1).all() if normalizer == "sparsemax" else (got == 0).all()


def test_sweep_overrides_switch_the_protocol_on_and_lines_record_every_rate(tmp_path):
  s = toy_sweep(steps=8)
  s.grids = s.grids[1:]  # the score sub-grid: 2 runs
  s.overrides.optim = {"learning_rates": (0.01, 0.05, 0.2)}
  s.overrides.train.reach_value = 0.7
  s.overrides.train.early_stopping = {"patience": 1, "metrics": "accuracy"}
  runs = sweep.expand(s)
  assert all(r.config.optim.learning_rates == (0.01, 0.05, 0.2) and r.config.train.reach_value == 0.7
             and r.config.train.early_stopping.patience == 1 for r in runs)
  sweep.run_sweep(s, str(tmp_path), progress=False)
  lines = results.read_lines(tmp_path / "results.jsonl")
  assert len(lines) == 4
  for line in lines:
    assert [p["learning_rate"] for p in line["per_rate"]] == [0.01, 0.05, 0.2]
    chosen = next(p for p in line["per_rate"] if p["learning_rate"] == line["learning_rate"])
    assert chosen["metrics"] == line["metrics"] and chosen["auc"] == line["auc"]
    assert line["reach"] == {"metric": "accuracy", "value": 0.7} and line["select_metric"] == "accuracy"
  text = report.write(str(tmp_path), plots=False)
  assert "| lr |" in text and "steps to val accuracy ≥ 0.7" in text
  bad = {**lines[0], "seed": 7, "per_rate": [{**lines[0]["per_rate"][0], "auc": "high"}]}
  (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
  with pytest.warns(UserWarning, match=r"per_rate\[0\].'auc' must be a number or null, got 'high'"):
    assert results.read_lines(tmp_path / "bad.jsonl") == []


@pytest.mark.parametrize("key, value, match", [
    ("optim.learning_rates", (0.01, -0.1), r"optim.learning_rates must be a tuple of at most 16 distinct "
                                           r"numbers in \(0, inf\)"),
    ("optim.learning_rates", (0.01, 0.01), "distinct"),
    ("train.reach_value", 1.5, r"train.reach_value=1.5 is out of range for 'accuracy'; valid: \(0, 1\]"),
    ("train.reach_metric", "", "train.reach_metric must name one val metric"),
])
def test_bad_tuning_values_name_the_key(key, value, match):
  cfg = toy_config()
  config_lib.set_dotted(cfg, key, value)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(cfg)


@pytest.mark.parametrize("key, value", [("optim.select_metric", "bleu"), ("train.reach_metric", "f1")])
def test_metrics_the_task_lacks_are_refused(tmp_path, key, value):
  cfg = toy_config()
  cfg.optim.learning_rates = (0.01, 0.02)
  config_lib.set_dotted(cfg, key, value)
  with pytest.raises(ValueError, match=rf"config: {key} \['{value}'\] are not metrics of task "
                                       r"'runner_toy': loss, accuracy"):
    train.train_and_evaluate(cfg, str(tmp_path))
