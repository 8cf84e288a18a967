"""Value checks of a run config: every number finite and inside its range, and the tuning fields.

Called by ``attnlab.config.validate``; errors are ValueErrors naming the key and the valid range.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from attnlab import validate

MAX_RATES = 16  # learning rates in one grid: every one multiplies the run's memory and compute


def check_tuning(config: ml_collections.ConfigDict) -> None:
  """optim.learning_rates: distinct positive finite numbers; train.reach_*: a metric and a value."""
  rates = config.optim.learning_rates
  if (not isinstance(rates, (tuple, list)) or len(rates) > MAX_RATES
      or not all(validate.is_number(r) and math.isfinite(r) and r > 0 for r in rates)
      or len(set(rates)) != len(rates)):
    raise ValueError(f"config: optim.learning_rates must be a tuple of at most {MAX_RATES} distinct "
                     f"numbers in (0, inf) (() = optim.learning_rate alone), got {rates!r}")
  for key in ("optim.select_metric", "train.reach_metric"):
    section, name = key.split(".")
    value = config[section][name]
    if not value.strip() or "," in value:
      raise ValueError(f"config: {key} must name one val metric, e.g. 'accuracy', got {value!r}")
  value = config.train.reach_value
  if value is not None and "accuracy" in config.train.reach_metric and not 0 < value <= 1:
    raise ValueError(f"config: train.reach_value={value} is out of range for "
                     f"{config.train.reach_metric!r}; valid: (0, 1] (None = not measured)")


# Valid ranges of float fields: whole keys, or for task.kwargs and model.kwargs the last part.
_RANGES = {"optim.learning_rate": "(0, inf)", "optim.weight_decay": "[0, inf)",
           "optim.clip_norm": "[0, inf)", "optim.b1": "[0, 1)", "optim.b2": "[0, 1)",
           "entropy_bonus": "[0, inf)", "baseline_decay": "[0, 1]"}
_RATE = "[0, 1)"  # option or kwarg names with "dropout", or ending in _rate or _prob


def _range(key: str) -> str | None:
  if key in _RANGES:
    return _RANGES[key]
  if key.startswith(("model.kwargs.", "task.kwargs.")):
    last = key.rsplit(".", 1)[-1]
    if last in _RANGES:
      return _RANGES[last]
    if "dropout" in last or last.endswith(("_rate", "_prob")):
      return _RATE
  return None


def check_numbers(tree: Any, prefix: str = "") -> None:
  """Every float finite and every ranged number (``_RANGES``) inside its range, else ValueError."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      check_numbers(v, f"{prefix}{k}.")
    return
  if isinstance(tree, list):
    for i, v in enumerate(tree):
      check_numbers(v, f"{prefix.rstrip('.')}[{i}].")
    return
  if isinstance(tree, bool) or not isinstance(tree, (int, float)):
    return
  key = prefix.rstrip(".")
  interval = _range(key)
  if not math.isfinite(tree):
    raise ValueError(f"config: {key} must be a finite number, got {tree}"
                     + (f" (valid range {interval})" if interval else ""))
  if interval:
    validate.in_range("config", key, tree, interval)
