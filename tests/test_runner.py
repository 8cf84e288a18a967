"""Runner tests: vmapped seeds, resume, early stopping, data parallelism, sweeps, results, report."""

import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from attnlab import checkpoints, config as config_lib, report, results, sweep, train

HERE = pathlib.Path(__file__).resolve().parent
TOY = str(HERE / "runner_toy.py")


def toy_config(steps=None, **train_fields):
  c = config_lib.load_file(TOY, None if steps is None else str(steps))
  for k, v in train_fields.items():
    c.train[k] = v
  return c


def per_seed(result, split, metric):
  return np.asarray(result["metrics"][split][metric]["per_seed"])


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("two_seeds")
  return train.train_and_evaluate(toy_config(), str(d)), d


def test_result_and_metrics_files(two_seed_run):
  result, d = two_seed_run
  for split in ("val", "test"):
    for metric in ("loss", "accuracy"):
      entry = result["metrics"][split][metric]
      v = np.asarray(entry["per_seed"])
      assert v.shape == (2,)
      np.testing.assert_allclose(entry["mean"], v.mean(), rtol=1e-12)
      np.testing.assert_allclose(entry["std"], v.std(ddof=1), rtol=1e-12)
  acc = per_seed(result, "test", "accuracy")
  assert np.all((acc >= 0) & (acc <= 1)) and acc.mean() > 0.6  # learnable: well above chance
  lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  train_steps = [line["step"] for line in lines if line["split"] == "train"]
  assert train_steps == list(range(1, 25))
  assert [line["step"] for line in lines if line["split"] == "val"] == [8, 16, 24]
  last_val = [line for line in lines if line["split"] == "val"][-1]
  np.testing.assert_allclose(last_val["accuracy"], per_seed(result, "val", "accuracy"), rtol=1e-6)
  with np.load(d / "attention.npz") as z:  # [H, Lq, Lk] rows of attention weights sum to one
    w = z[z.files[0]]
  assert w.shape == (2, 6, 6)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


def test_vmapped_seeds_equal_separate_runs(two_seed_run, tmp_path):
  together, _ = two_seed_run
  for i, seed in enumerate((0, 1)):
    alone = train.train_and_evaluate(toy_config(seeds=(seed,)), str(tmp_path / f"s{seed}"))
    for split in ("val", "test"):
      for metric in ("loss", "accuracy"):
        np.testing.assert_allclose(per_seed(alone, split, metric)[0], per_seed(together, split, metric)[i],
                                   rtol=2e-5, atol=1e-6)


def test_resume_after_crash_equals_uninterrupted(two_seed_run, tmp_path, monkeypatch):
  uninterrupted, _ = two_seed_run
  real_save = checkpoints.save

  def crash_after_first(directory, step, tree):
    real_save(directory, step, tree)
    raise KeyboardInterrupt("simulated kill after the step-8 checkpoint")

  monkeypatch.setattr(checkpoints, "save", crash_after_first)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(toy_config(), str(tmp_path))
  assert checkpoints.latest_step(tmp_path / "checkpoints") == 8
  monkeypatch.setattr(checkpoints, "save", real_save)
  resumed = train.train_and_evaluate(toy_config(), str(tmp_path))
  for split in ("val", "test"):
    np.testing.assert_allclose(per_seed(resumed, split, "loss"), per_seed(uninterrupted, split, "loss"),
                               rtol=1e-5)
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "train"]
  assert steps == list(range(1, 25))  # no duplicated lines after the resume


def test_early_stopping_keeps_each_seeds_best_val_state(tmp_path):
  cfg = toy_config(48, eval_every=2, checkpoint_every=0)
  cfg.train.early_stopping.patience = 2
  cfg.train.early_stopping.metrics = "loss"
  cfg.optim.learning_rate = 0.3  # noisy enough that val loss stops improving for some seed
  result = train.train_and_evaluate(cfg, str(tmp_path))
  vals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  vals = [v for v in vals if v["split"] == "val"]
  for i in range(2):
    stop = result["stopped_at"][i]
    logged = [(v["step"], v["loss"][i]) for v in vals if v["step"] <= stop]
    best_step, best_loss = min(logged, key=lambda t: (t[1], -t[0]))  # ties: the later one (<=)
    assert result["best_step"][i] == best_step
    np.testing.assert_allclose(per_seed(result, "val", "loss")[i], best_loss, rtol=1e-6)
    if stop < 48:  # patience 2: the last two evaluations did not improve on the best
      assert stop - best_step == 2 * 2
  assert min(result["stopped_at"]) < 48


def test_workdir_with_other_config_is_refused(two_seed_run):
  _, d = two_seed_run
  before = (d / "result.json").read_bytes()
  with pytest.raises(ValueError, match="optim.learning_rate"):
    cfg = toy_config()
    cfg.optim.learning_rate = 0.5
    train.train_and_evaluate(cfg, str(d))
  assert (d / "result.json").read_bytes() == before


def test_data_parallel_four_devices_equal_one(two_seed_run, tmp_path):
  one_device, _ = two_seed_run
  code = f"""
import json
import jax
from attnlab import config, parallel, train
assert jax.device_count() == 4, jax.devices()
b = parallel.shard_batch({{"x": __import__("numpy").zeros((2, 16, 3))}}, parallel.make_mesh(), 1)
print("SHARDS", len(b["x"].addressable_shards), b["x"].addressable_shards[0].data.shape)
r = train.train_and_evaluate(config.load_file({TOY!r}), {str(tmp_path)!r})
print("RESULT", json.dumps(r))
"""
  flags = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=4"])
  env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240,
                       cwd=HERE.parent)
  assert out.returncode == 0, out.stderr[-3000:]
  shards = next(line for line in out.stdout.splitlines() if line.startswith("SHARDS")).split(" ", 1)[1]
  assert shards == "4 (2, 4, 3)"  # the example axis is split over the 4 devices
  four = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[7:])
  assert four["devices"] == 4 and one_device["devices"] == 1
  for split in ("val", "test"):
    for metric in ("loss", "accuracy"):
      np.testing.assert_allclose(per_seed(four, split, metric), per_seed(one_device, split, metric),
                                 rtol=1e-4, atol=1e-6)


# --- sweeps -----------------------------------------------------------------------------------

def toy_sweep(name="toy", steps=8, widths=(4, 8)):
  import ml_collections
  c = ml_collections.ConfigDict()
  c.name = name
  c.seeds = (0, 1)
  c.overrides = {"train": {"steps": steps, "eval_every": 4, "checkpoint_every": 0,
                           "attention_maps": False}}
  c.grids = [{"group": "width", "config": TOY, "axes": {"model.kwargs.d_model": list(widths)}},
             {"group": "score", "config": TOY, "fixed": {"model.kwargs.d_model": 4},
              "axes": {"model.attention.score": ["dot", "additive"]}}]
  return c


def test_expand_is_a_union_of_sub_grids():
  runs = sweep.expand(toy_sweep(widths=(4, 8, 16)))
  assert [r.point for r in runs] == [
      {"group": "width", "task": "runner_toy", "model.kwargs.d_model": 4},
      {"group": "width", "task": "runner_toy", "model.kwargs.d_model": 8},
      {"group": "width", "task": "runner_toy", "model.kwargs.d_model": 16},
      {"group": "score", "task": "runner_toy", "model.kwargs.d_model": 4, "model.attention.score": "dot"},
      {"group": "score", "task": "runner_toy", "model.kwargs.d_model": 4,
       "model.attention.score": "additive"}]
  assert runs[4].config.model.attention.score == "additive" and runs[4].config.train.seeds == (0, 1)
  assert runs[2].config.train.steps == 8


def test_shards_union_to_the_full_sweep(tmp_path):
  s = toy_sweep(widths=(8,))  # 3 runs: shard 0 of 2 takes runs 0 and 2, shard 1 run 1
  for i, n in enumerate((2, 1)):
    counts = sweep.run_sweep(s, str(tmp_path), shard=(i, 2), progress=False)
    assert counts["runs"] == n
  recs = results.read_lines(tmp_path / "results.jsonl")
  got = sorted(results.key(r) for r in recs)
  want = sorted((results.canonical(r.point), seed) for r in sweep.expand(s) for seed in (0, 1))
  assert got == want
  again = sweep.run_sweep(s, str(tmp_path), progress=False)  # everything done: nothing retrained
  assert again == {"runs": 3, "trained": 0, "skipped": 3, "busy": 0}
  assert len(results.read_lines(tmp_path / "results.jsonl")) == 6
  # a run whose result.json exists but whose lines are missing is recorded without retraining
  text = (tmp_path / "results.jsonl").read_text().splitlines(keepends=True)
  (tmp_path / "results.jsonl").write_text("".join(text[:-1]))
  assert sweep.run_sweep(s, str(tmp_path), progress=False)["trained"] == 1
  assert sorted(results.key(r) for r in results.read_lines(tmp_path / "results.jsonl")) == want


def test_a_run_with_an_earlier_runs_config_reuses_its_lines(tmp_path):
  s = toy_sweep(steps=4, widths=(4,))
  s.grids = [s.grids[0], {**s.grids[1], "axes": {"model.attention.score": ["scaled_dot", "dot"]}}]
  runs = sweep.expand(s)  # run 1 (score=scaled_dot at width 4) is run 0's config (the default score)
  assert {i: t.index for i, t in sweep._twins(runs).items()} == {1: 0}  # pylint: disable=protected-access
  assert sweep.run_sweep(s, str(tmp_path), progress=False) == {"runs": 3, "trained": 2, "skipped": 1,
                                                                "busy": 0}
  recorded = results.read_lines(tmp_path / "results.jsonl")
  lines = {(results.canonical(r["run"]), r["seed"]): r for r in recorded}
  assert len(lines) == 6
  alone = train.train_and_evaluate(runs[1].config, str(tmp_path / "alone"))  # what training it gives
  for i, seed in enumerate((0, 1)):
    first, twin = (lines[(results.canonical(runs[k].point), seed)] for k in (0, 1))
    assert {**first, "run": None} == {**twin, "run": None}
    assert twin["metrics"]["test"]["loss"] == alone["metrics"]["test"]["loss"]["per_seed"][i]


def test_files_written_with_the_old_section_names_still_read(tmp_path):
  """A DIR written when model.kwargs was model.options: its sweep.json is this sweep's, its lines
  read back under the new key, and a twin run reuses them (nothing trains here)."""
  s = toy_sweep(steps=4, widths=(4,))
  s.grids = [s.grids[0], {**s.grids[1], "axes": {"model.attention.score": ["scaled_dot", "dot"]}}]
  runs = sweep.expand(s)  # run 1 is run 0's config (the default score)
  old_point = lambda p: {k.replace("model.kwargs.", "model.options."): v for k, v in p.items()}

  def old_config(run):  # nor had it a parallel section
    c = {k: v for k, v in config_lib.to_dict(run.config).items() if k != "parallel"}
    return {**c, "task": {("knobs" if k == "kwargs" else k): v for k, v in c["task"].items()},
            "model": {("options" if k == "kwargs" else k): v for k, v in c["model"].items()}}

  body = {"seeds": [0, 1], "runs": [[old_point(r.point), old_config(r)] for r in runs]}
  fp = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
  (tmp_path / "sweep.json").write_text(json.dumps({"name": s.name, "fingerprint": fp, "seeds": [0, 1],
                                                   "runs": [old_point(r.point) for r in runs]}))
  res = tmp_path / "results.jsonl"
  res.write_text("".join(json.dumps({"run": old_point(runs[0].point), "seed": seed,
                                     "metrics": {"test": {"accuracy": 0.25 + seed / 2}}}) + "\n"
                         for seed in (0, 1)))
  sweep.check_workdir(tmp_path, s, runs)  # accepted as this sweep's DIR
  assert [r["run"] for r in results.read_lines(res)] == [runs[0].point] * 2
  assert sweep._copy_twin(runs[1], runs[0], s, res)  # pylint: disable=protected-access
  copied = results.read_lines(res)[2:]
  assert [(r["run"], r["seed"], r["metrics"]) for r in copied] == [
      (runs[1].point, seed, {"test": {"accuracy": 0.25 + seed / 2}}) for seed in (0, 1)]
  s.seeds = (0,)  # another sweep: still refused
  with pytest.raises(ValueError, match="different sweep config"):
    sweep.check_workdir(tmp_path, s, sweep.expand(s))


def test_sweep_workdir_of_another_sweep_is_refused(tmp_path):
  s = toy_sweep(steps=4, widths=(4,))
  s.grids = s.grids[:1]
  sweep.run_sweep(s, str(tmp_path), progress=False)
  before = {p: p.read_bytes() for p in tmp_path.glob("*.json*")}
  with pytest.raises(ValueError, match="different sweep config"):
    other = toy_sweep(steps=5, widths=(4,))
    other.grids = other.grids[:1]
    sweep.run_sweep(other, str(tmp_path), progress=False)
  assert before == {p: p.read_bytes() for p in tmp_path.glob("*.json*")}


@pytest.mark.parametrize("field, value, match", [
    ("model.attention.score", "dott", "model.attention.score: unknown score 'dott'; registered scores: "
     "additive"),
    ("model.kwargs.widht", 3, "unknown key 'model.kwargs.widht'"),
    ("model.kwargs.score", "dot", "unknown key 'model.kwargs.score'.*attention category is "
     "model.attention.score"),
    ("model.attention.scor", "dot", r"unknown key 'model.attention.scor'.*valid: .*score, score_kwargs"),
    ("model.options.d_model", 8, "config: 'model.options.d_model' is now 'model.kwargs.d_model'"),
    ("model.attention.score_kwargs.hidden", 8, r"model.attention.score_kwargs.hidden: unknown option of "
     r"score 'scaled_dot'; it takes no options"),
])
def test_sweep_bad_names(field, value, match):
  s = toy_sweep()
  s.grids = [{"group": "g", "config": TOY, "axes": {field: [value]}}]
  with pytest.raises(ValueError, match=match):
    sweep.expand(s)


def test_unknown_task_and_model_names(tmp_path):
  cfg = toy_config()
  cfg.task.name = "no_such_task"
  with pytest.raises(ValueError, match="unknown task 'no_such_task'.*runner_toy"):
    train.train_and_evaluate(cfg, str(tmp_path / "a"))
  cfg = toy_config()
  cfg.model.kwargs.d_model = 8
  with cfg.unlocked():
    cfg.model.kwargs.widht = 3
  with pytest.raises(ValueError, match="unknown model.kwargs 'widht'.*d_model"):
    train.train_and_evaluate(cfg, str(tmp_path / "b"))


def test_config_schema_errors():
  cfg = toy_config()
  with pytest.raises(AttributeError):
    cfg.train.sead = 3  # locked: no new keys
  with pytest.raises(TypeError):
    cfg.train.steps = "many"
  with pytest.raises(ValueError, match="unknown key 'train.sead'.*valid: .*steps"):
    config_lib.check_key(cfg, "train.sead")
  cfg = toy_config()
  cfg.optim.name = "adagrad"
  with pytest.raises(ValueError, match="optim.name='adagrad'.*adam, adamw, sgd"):
    config_lib.validate(cfg)


def test_default_sweep_is_the_tuned_protocol_over_every_block():
  runs = sweep.expand(config_lib.load_file(str(sweep.DEFAULT)))
  assert {r.point["group"] for r in runs} == {"score", "normalizer", "scale", "source", "target", "heads"}
  for r in runs:
    assert len(r.config.train.seeds) >= 10 and len(r.config.optim.learning_rates) >= 3
    assert r.config.train.early_stopping.patience > 0 and r.config.train.reach_value is not None
  scale = [r for r in runs if r.point["group"] == "scale"]
  assert {r.config.model.attention.score for r in scale} == {"dot", "scaled_dot"}
  assert all(r.config.model.kwargs.qkv_features // r.config.model.attention.num_heads >= 128 for r in scale)
  normalizers = {r.config.model.attention.normalizer for r in runs if r.point["group"] == "normalizer"}
  assert normalizers == {"softmax", "sparsemax", "entmax15", "sigmoid"}


# --- results and statistics ---------------------------------------------------------------------

def test_t_quantile_closed_forms():
  for p in (0.9, 0.975, 0.995):
    np.testing.assert_allclose(results.t_quantile(p, 1), math.tan(math.pi * (p - 0.5)), rtol=1e-9)
    np.testing.assert_allclose(results.t_quantile(p, 2), (2 * p - 1) / math.sqrt(2 * p * (1 - p)),
                               rtol=1e-9)


def test_append_line_survives_a_torn_line(tmp_path):
  path = tmp_path / "r.jsonl"
  line = lambda a, seed: {"run": {"group": "g", "task": "t", "a": a}, "seed": seed, "metrics": {}}
  results.append_line(path, line(1, 0))
  with open(path, "a") as f:
    f.write('{"run": {"a": 2}, "se')  # a machine crash mid-line
  results.append_line(path, line(3, 1))
  with pytest.warns(UserWarning, match="r.jsonl:2: skipping an incomplete line"):
    recs = results.read_lines(path)
  assert [r["run"]["a"] for r in recs] == [1, 3]


def test_report_renders_from_a_results_file(tmp_path):
  rng = np.random.default_rng(0)
  accs = {"dot": [0.91, 0.93, 0.92], "additive": [0.90, 0.94, 0.91], "concat": [0.50, 0.52, 0.49]}
  for variant, values in accs.items():
    for seed, v in enumerate(values):
      results.append_line(tmp_path / "results.jsonl", {
          "run": {"group": "score", "task": "toy", "model.attention.score": variant}, "seed": seed,
          "metrics": {"val": {"accuracy": v + rng.normal() * 0.01}, "test": {"accuracy": v}}})
  text = report.write(str(tmp_path), plots=True)
  assert (tmp_path / "report.md").read_text() == text
  row = next(line for line in text.splitlines() if "| score=dot |" in line)
  v = np.asarray(accs["dot"])
  half = 4.302652729911275 * v.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
  assert f"{100 * v.mean():.1f} ± {100 * half:.1f}" in row and "★" in row
  assert "≈" in next(line for line in text.splitlines() if "| score=additive |" in line)
  concat = next(line for line in text.splitlines() if "| score=concat |" in line)
  assert "★" not in concat and "≈" not in concat
  assert (tmp_path / "plots" / "score.png").stat().st_size > 1000
