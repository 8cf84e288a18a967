"""Argument checks shared by the attention layers (the category itself: attnlab.attention_spec)."""

from __future__ import annotations

from typing import Any


def positive_int(layer: str, arg: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{layer}: {arg} must be a positive int, got {value!r}")
  return value


def divides(layer: str, arg: str, value: int, other_arg: str, other: int) -> None:
  """``value`` (named ``arg``) must divide ``other`` (named ``other_arg``)."""
  if other % value:
    raise ValueError(f"{layer}: {arg} ({value}) must divide {other_arg} ({other})")


def rate(layer: str, arg: str, value: Any) -> float:
  if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
    raise ValueError(f"{layer}: {arg} must be a float in [0, 1), got {value!r}")
  return float(value)
