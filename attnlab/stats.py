"""Statistics of the reports, in plain Python (no SciPy): Student t, paired and Welch tests, Holm.

The t distribution comes from the regularised incomplete beta function I_x(a, b) (Lentz's continued
fraction, Numerical Recipes §6.4): for T ~ t(df), P(|T| >= t) = I_{df/(df+t²)}(df/2, 1/2). That is
all a table needs: CI half-widths t_{0.975, n-1}·s/√n and two-sided p-values. Comparisons within a
block of a report are corrected for multiplicity with Holm's step-down method (Holm 1979).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

_TINY, _EPS = 1e-300, 1e-15


def _beta_cf(a: float, b: float, x: float) -> float:
  """The continued fraction of I_x(a, b) (modified Lentz); converges fast for x < (a+1)/(a+b+2)."""
  qab, qap, qam = a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > _TINY else _TINY)
  h = d
  for m in range(1, 10_000):
    m2 = 2 * m
    for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
               -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
      d = 1.0 + aa * d
      d = 1.0 / (d if abs(d) > _TINY else _TINY)
      c = 1.0 + aa / c
      c = c if abs(c) > _TINY else _TINY
      h *= d * c
    if abs(d * c - 1.0) < _EPS:
      break
  return h


def betainc(a: float, b: float, x: float) -> float:
  """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
  if a <= 0 or b <= 0 or not 0.0 <= x <= 1.0:
    raise ValueError(f"betainc: need a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
  if x in (0.0, 1.0):
    return x
  front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                   + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return front * _beta_cf(a, b, x) / a
  return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
  """P(|T| >= |t|) for T ~ Student t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
  if df <= 0:
    raise ValueError(f"t_two_sided_p: need df > 0, got {df}")
  if math.isinf(t):
    return 0.0
  return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) for T ~ Student t with ``df`` degrees of freedom."""
  half = 0.5 * t_two_sided_p(t, df)
  return 1.0 - half if t >= 0 else half


def t_quantile(p: float, df: float) -> float:
  """Student-t quantile t_{p, df} for 0.5 <= p < 1 (bisection on ``t_cdf``, to ~1e-12)."""
  if not 0.5 <= p < 1 or df <= 0:
    raise ValueError(f"t_quantile: need 0.5 <= p < 1 and df > 0, got p={p}, df={df}")
  lo, hi = 0.0, 1.0
  while t_cdf(hi, df) < p:
    lo, hi = hi, hi * 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    if hi - lo < 1e-13 * max(1.0, hi):
      break
  return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, int]:
  """(mean, half-width of the Student-t ``level`` CI, n); half-width NaN for n < 2."""
  v = np.asarray(list(values), dtype=np.float64)
  n = v.size
  if n == 0:
    return math.nan, math.nan, 0
  if n < 2:
    return float(v.mean()), math.nan, 1
  half = t_quantile(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
  return float(v.mean()), float(half), n


def _p_of(diff: float, se2: float, df: float) -> float:
  if se2 == 0:
    return 1.0 if diff == 0 else 0.0
  return t_two_sided_p(diff / math.sqrt(se2), df)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
  """Two-sided p-value of Welch's unequal-variance t-test (NaN with fewer than 2 values a side)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < 2 or b.size < 2:
    return math.nan
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  if va + vb == 0:
    return 1.0 if a.mean() == b.mean() else 0.0
  df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
  return _p_of(float(a.mean() - b.mean()), float(va + vb), float(df))


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
  """Two-sided p-value of the paired t-test on ``a[i] - b[i]`` (NaN for fewer than 2 pairs)."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if d.size < 2:
    return math.nan
  return _p_of(float(d.mean()), float(d.var(ddof=1) / d.size), d.size - 1)


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-adjusted p-values, in the given order; NaNs stay NaN and are not counted in m.

  Sorted ascending, p_(j) becomes max over i <= j of min(1, (m - i + 1)·p_(i)); a hypothesis is
  rejected at level α when its adjusted p-value is below α (family-wise error rate <= α).
  """
  p = np.asarray(p_values, np.float64)
  out = np.full(p.shape, math.nan)
  idx = [i for i in np.argsort(p, kind="stable") if not math.isnan(p[i])]
  m, running = len(idx), 0.0
  for rank, i in enumerate(idx):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out.tolist()
