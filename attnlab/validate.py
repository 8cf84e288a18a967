"""Argument checks shared by the package: a choice, a positive or bounded int, a number in a range.

Each check returns the value when it is valid, else raises an error naming ``where`` (the caller,
e.g. ``task 'copy'``, ``config`` or ``MultiHeadAttention``) and ``name`` and saying what is valid.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def is_number(value: Any) -> bool:
  """An int or float, not a bool."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def choice(where: str, name: str, value: Any, valid: Sequence[Any], *, bare: bool = False) -> Any:
  """``value`` if it is one of ``valid``; ``bare`` lists string choices unquoted (config keys)."""
  if value not in valid:
    listing = ", ".join(str(v) if bare else repr(v) for v in valid)
    raise ValueError(f"{where}: {name}={value!r} is not valid; choose one of {listing}")
  return value


def positive_int(where: str, name: str, value: Any) -> int:
  """An int >= 1 (not a bool), else a ValueError."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
  return value


def int_at_least(where: str, name: str, value: Any, minimum: int) -> int:
  """An int >= ``minimum``: a TypeError for a non-int (or bool), a ValueError below it."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{where}: {name} must be an int, got {value!r}")
  if value < minimum:
    raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
  return int(value)


def inside(value: float, interval: str) -> bool:
  """Whether ``value`` lies in ``interval``, written like ``"[0, 1)"`` or ``"(0, inf)"``."""
  lo, hi = (float(x) for x in interval[1:-1].split(","))
  above = lo < value if interval[0] == "(" else lo <= value
  below = value < hi if interval[-1] == ")" else value <= hi
  return above and below


def in_range(where: str, name: str, value: float, interval: str) -> float:
  """``value`` if it lies in ``interval`` (e.g. ``"[0, 1)"``), else a ValueError naming it."""
  if not inside(value, interval):
    raise ValueError(f"{where}: {name}={value} is out of range; valid: {interval}")
  return value


def rate(where: str, name: str, value: Any) -> float:
  """A float in [0, 1) such as a dropout rate, else a ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not inside(value, "[0, 1)"):
    raise ValueError(f"{where}: {name} must be a float in [0, 1), got {value!r}")
  return float(value)


def divides(where: str, name: str, value: int, other_name: str, other: int) -> None:
  """``value`` (named ``name``) must divide ``other`` (named ``other_name``)."""
  if other % value:
    raise ValueError(f"{where}: {name} ({value}) must divide {other_name} ({other})")
