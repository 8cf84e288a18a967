"""Bad values where they enter: malformed results lines, unknown report choices, non-finite or
out-of-range config values. Each is refused or skipped with a message naming where and what."""

import json

import ml_collections
import pytest

from attnlab import config as config_lib, report, results, sweep, train
from tests.test_cli import attnlab
from tests.test_runner import toy_config


def result_line(variant, seed, acc, status="ok"):
  value = acc if status == "ok" else None
  return {"run": {"group": "score", "task": "toy", "model.kwargs.score": variant}, "seed": seed,
          "status": status, "metrics": {"val": {"accuracy": value}, "test": {"accuracy": value}}}


def test_malformed_results_lines_are_skipped_by_name(tmp_path):
  path = tmp_path / "results.jsonl"
  good = [result_line(v, s, a) for v, accs in {"dot": (0.9, 0.92), "additive": (0.7, 0.75)}.items()
          for s, a in enumerate(accs)]
  bad = ['{"foo": 1}', "[1, 2, 3]", json.dumps({"run": good[0]["run"], "seed": 5}),
         json.dumps({**good[0], "seed": "x"}),
         json.dumps({**good[0], "metrics": {"test": {"accuracy": "9"}}})]
  path.write_text("\n".join([json.dumps(good[0]), *bad, *map(json.dumps, good[1:])]) + "\n")
  with pytest.warns(UserWarning) as caught:
    assert results.read_lines(path) == good
  messages = [str(w.message) for w in caught]
  assert messages == [f"{path}:2: skipping a malformed results line: missing 'run', 'seed', 'metrics'",
                      f"{path}:3: skipping a malformed results line: expected a JSON object, got list",
                      f"{path}:4: skipping a malformed results line: missing 'metrics'",
                      f"{path}:5: skipping a malformed results line: 'seed' must be an int >= 0, got 'x'",
                      f"{path}:6: skipping a malformed results line: metric test.accuracy must be a "
                      "number or null, got '9'"]
  with pytest.warns(UserWarning):
    text = report.write(str(tmp_path), plots=False)
  assert "| score=dot | **91.0" in text and "| 2 |" in text
  s = ml_collections.ConfigDict({"seeds": (0, 1, 5)})
  with pytest.warns(UserWarning):  # seed 5's line has no metrics: not done
    assert sweep._missing(sweep.Run(0, good[0]["run"], None), s, sweep._done(path)) == [5]  # noqa: SLF001


def test_report_refuses_unknown_choices_and_keeps_the_old_report(tmp_path):
  for s, a in enumerate((0.9, 0.92)):
    results.append_line(tmp_path / "results.jsonl", result_line("dot", s, a))
  report.write(str(tmp_path), plots=False)
  before = (tmp_path / "report.md").read_bytes()
  with pytest.raises(ValueError, match="unknown metric 'nosuchmetric' for split 'test'; the results "
                                       "have: accuracy"):
    report.write(str(tmp_path), metric="nosuchmetric", plots=False)
  out = attnlab("report", str(tmp_path), "--split=train", "--noplots", timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert "attnlab: error: report: unknown split 'train'; the results have: test, val" in out.stderr
  (tmp_path / "results.jsonl").write_text('{"foo": 1}\n')
  with pytest.warns(UserWarning), pytest.raises(report.NoResults, match="no valid results lines"):
    report.write(str(tmp_path), plots=False)
  assert (tmp_path / "report.md").read_bytes() == before


@pytest.mark.parametrize("key, value, message", [
    ("optim.learning_rate", float("nan"), "optim.learning_rate must be a finite number, got nan"),
    ("optim.learning_rate", float("inf"), "optim.learning_rate must be a finite number, got inf"),
    ("optim.learning_rate", 0.0, r"optim.learning_rate=0.0 is out of range; valid: \(0, inf\)"),
    ("optim.b2", 1.5, r"optim.b2=1.5 is out of range; valid: \[0, 1\)"),
    ("optim.b1", -0.1, r"optim.b1=-0.1 is out of range; valid: \[0, 1\)"),
    ("optim.weight_decay", -1e-4, "optim.weight_decay=-0.0001 is out of range"),
    ("optim.clip_norm", float("-inf"), "optim.clip_norm must be a finite number"),
    ("model.kwargs.dropout_rate", 1.0, r"model.kwargs.dropout_rate=1.0 is out of range; valid: \[0, 1\)"),
    ("optim.warmup_steps", -1, "optim.warmup_steps must be >= 0"),
])
def test_non_finite_or_out_of_range_values_are_refused_by_key(key, value, message, tmp_path):
  cfg = toy_config()
  config_lib.set_dotted(cfg, key, value)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
