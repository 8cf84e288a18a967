"""Argument checks shared by the attention layers: clear errors naming the argument and the choices."""

from __future__ import annotations

from typing import Any, Sequence

from attnlab import registry


def choice(layer: str, arg: str, value: Any, valid: Sequence[str]) -> str:
  """``value`` if it is one of ``valid``, else a ValueError naming ``arg`` and the valid choices."""
  if value not in valid:
    raise ValueError(f"{layer}: unknown {arg}={value!r}; valid choices: {', '.join(map(repr, valid))}")
  return value


def registered(layer: str, arg: str, kind: str, name: Any) -> str:
  """``name`` if it is a registered member of ``kind`` (checked at construction, not import)."""
  if not isinstance(name, str):
    raise TypeError(f"{layer}: {arg} must be a registered {kind} name (str), got {type(name).__name__}")
  return choice(layer, arg, name, registry.names(kind))


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
