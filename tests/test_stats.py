"""attnlab.stats against table values and closed forms, and the report's paired, Holm-corrected marks."""

import math

import numpy as np
import pytest

from attnlab import compare, report, results, stats

# Student-t quantiles t_{p, df} from the usual tables (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2).
T_TABLE = [(0.975, 1, 12.7062047), (0.975, 2, 4.30265273), (0.975, 5, 2.57058184), (0.975, 9, 2.26215716),
           (0.975, 10, 2.22813885), (0.975, 29, 2.04522964), (0.995, 20, 2.84533971), (0.95, 30, 1.69726089),
           (0.9, 4, 1.53320627), (0.995, 9, 3.24983554)]


@pytest.mark.parametrize("p, df, t", T_TABLE)
def test_t_quantiles_and_p_values_match_the_table(p, df, t):
  assert stats.t_quantile(p, df) == pytest.approx(t, rel=2e-8)
  assert stats.t_two_sided_p(t, df) == pytest.approx(2 * (1 - p), rel=1e-6)
  assert stats.t_cdf(-t, df) == pytest.approx(1 - p, rel=1e-6)
  assert results.t_quantile(p, df) == stats.t_quantile(p, df)  # its old home still answers


def test_t_closed_forms_and_the_normal_limit():
  for t in (0.3, 1.0, 2.5, 40.0):
    assert stats.t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10)
    assert stats.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
  assert stats.t_two_sided_p(1.959963985, 1e7) == pytest.approx(0.05, rel=1e-5)  # df -> inf: N(0, 1)
  lo, mid, hi = (stats.t_two_sided_p(2.0, df) for df in (7, 7.5, 8))  # Welch's df is fractional
  assert lo > mid > hi


def test_betainc_identities():
  for x in (0.1, 0.5, 0.93):
    assert stats.betainc(1, 1, x) == pytest.approx(x, rel=1e-12)
    assert stats.betainc(3.5, 1, x) == pytest.approx(x ** 3.5, rel=1e-12)
    assert stats.betainc(1, 4, x) == pytest.approx(1 - (1 - x) ** 4, rel=1e-12)
  assert stats.betainc(7.25, 7.25, 0.5) == pytest.approx(0.5, rel=1e-12)
  with pytest.raises(ValueError, match="need a, b > 0"):
    stats.betainc(0, 1, 0.5)


def _t3_p(t):
  """Two-sided p-value of Student t with 3 degrees of freedom (closed form)."""
  u = t / math.sqrt(3)
  return 1 - 2 / math.pi * (u / (1 + u * u) + math.atan(u))


def test_paired_and_welch_tests_by_hand():
  d = np.array([0.5, 0.5, 1.0, 0.3])  # a - b
  a = np.array([1.0, 2.0, 3.0, 4.0])
  t = d.mean() / (d.std(ddof=1) / 2)  # 3.8512
  assert stats.paired_p(a, a - d) == pytest.approx(_t3_p(t), rel=1e-9)
  assert 0.02 < _t3_p(t) < 0.05
  # equal variances and sizes: Welch's df = 2(n - 1) = 2; t = 3 / sqrt(2)
  expected = 1 - 3 / math.sqrt(2) / math.sqrt(6.5)
  assert stats.welch_p([1.0, 3.0], [4.0, 6.0]) == pytest.approx(expected, rel=1e-9)
  assert stats.paired_p([1.0, 2.0], [1.0, 2.0]) == 1.0 and stats.paired_p([1.0, 2.0], [0.0, 1.0]) == 0.0
  assert math.isnan(stats.paired_p([1.0], [2.0])) and math.isnan(stats.welch_p([1.0], [2.0, 3.0]))


def test_holm_by_hand():
  # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 -> max(0.06, 0.04) = 0.06
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  out = stats.holm([0.02, math.nan, 0.04, 0.9])  # NaN is no hypothesis: m = 3
  assert out[0] == pytest.approx(0.06) and math.isnan(out[1]) and out[2:] == pytest.approx([0.08, 0.9])
  assert stats.holm([0.5, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def line(variant, seed, acc, **extra):
  return {"run": {"group": "score", "task": "toy", "model.kwargs.score": variant}, "seed": seed,
          "metrics": {"val": {"accuracy": acc}, "test": {"accuracy": acc}}, **extra}


def test_report_marks_use_paired_tests_with_holm(tmp_path):
  best = np.array([0.90, 0.80, 0.70, 0.60])  # seeds differ a lot; each rival is consistently below
  rivals = {"a": best - [0.02, 0.03, 0.01, 0.04], "b": best - [0.01, 0.05, 0.02, 0.03],
            "c": best - [0.21, 0.19, 0.20, 0.195]}
  for variant, values in {"best": best, **rivals}.items():
    for seed, v in enumerate(values):
      results.append_line(tmp_path / "results.jsonl", line(variant, seed, float(v)))
  rs = {r.variant: r for r in compare.rows(results.read_lines(tmp_path / "results.jsonl"))}
  raw = {}
  for v, values in rivals.items():
    d = best - values
    raw[v] = _t3_p(d.mean() / (d.std(ddof=1) / 2))
  assert raw["a"] < 0.05 and raw["b"] < 0.05  # significant alone ...
  holm = dict(zip(raw, stats.holm(list(raw.values()))))
  assert holm["a"] >= 0.05 and holm["b"] >= 0.05  # ... not after Holm over the block's 3 comparisons
  for v in rivals:
    assert rs[f"score={v}"].p == pytest.approx(holm[v], rel=1e-9)
  assert [rs[f"score={v}"].mark for v in ("best", "a", "b", "c")] == ["★", "≈", "≈", ""]
  assert stats.welch_p(best, rivals["c"]) > 0.05  # unpaired, the seeds' spread would hide it
  text = report.write(str(tmp_path), plots=False)
  row_c = next(line for line in text.splitlines() if "| score=c |" in line).split(" | ")
  assert row_c[3] == f"{holm['c']:.3f}" or (row_c[3] == "<0.001" and holm["c"] < 0.001)


def test_rate_chosen_on_val_and_edge_warned(tmp_path):
  # two rates; at 1e-2 val is better but test is worse: the report must follow val
  grid = {"dot": ((0.70, 0.60), (0.80, 0.50)), "additive": ((0.90, 0.90), (0.60, 0.95))}  # (val, test)
  for variant, ((v1, t1), (v2, t2)) in grid.items():
    for seed in range(3):
      per_rate = [{"learning_rate": lr, "status": "ok", "best_step": 10, "stopped_at": 20,
                   "metrics": {"val": {"accuracy": v + 0.01 * seed}, "test": {"accuracy": t + 0.01 * seed}},
                   "reach_step": reach, "auc": 0.5}
                  for lr, v, t, reach in ((1e-3, v1, t1, None), (1e-2, v2, t2, 30 + seed))]
      results.append_line(tmp_path / "results.jsonl", {
          **line(variant, seed, 0.0), "metrics": per_rate[1]["metrics"], "learning_rate": 1e-2,
          "reach": {"metric": "accuracy", "value": 0.9}, "reach_step": 30 + seed, "auc": 0.5,
          "select_metric": "accuracy", "per_rate": per_rate})
  rs = {r.variant: r for r in compare.rows(results.read_lines(tmp_path / "results.jsonl"))}
  assert rs["score=dot"].lr == 1e-2 and rs["score=dot"].values == pytest.approx([0.50, 0.51, 0.52])
  assert rs["score=additive"].lr == 1e-3 and rs["score=additive"].values == pytest.approx([0.90, 0.91, 0.92])
  assert rs["score=additive"].reach_steps == [] and rs["score=additive"].reach_of == 3  # never reached
  assert rs["score=dot"].reach_steps == [30, 31, 32]
  text = report.write(str(tmp_path), plots=False)
  cells = {line.split(" | ")[1]: line.split(" | ") for line in text.splitlines() if line.startswith("| toy")}
  assert cells["score=dot"][5] == "0.01 ⚠" and cells["score=additive"][5] == "0.001 ⚠"
  assert cells["score=dot"][6] == "31 ± 2 (3/3)" and cells["score=additive"][6] == "– (0/3)"
  assert "steps to val accuracy ≥ 0.9" in text
  assert "widen the grid: score=dot (toy), score=additive (toy)" in text


def test_old_lines_show_dashes(tmp_path):
  for seed, v in enumerate((0.9, 0.92)):
    results.append_line(tmp_path / "results.jsonl", line("dot", seed, v))
  text = report.write(str(tmp_path), plots=False)
  cells = next(line for line in text.splitlines() if "| score=dot |" in line).split(" | ")
  assert cells[5:8] == ["-", "-", "-"] and "zeros" not in text  # lr, steps, AUC; no sparsity column
