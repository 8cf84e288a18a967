"""A tiny string-keyed registry: ``register(kind, name)`` and ``get(kind, name)``.

Every axis along which attnlab compares attention is a *kind* (``score``, ``normalizer``,
``target``, ``model``, ``task``, ...). Researchers add their own members from outside the
package without editing it::

    from attnlab import registry

    @registry.register("score", "my_score")
    def my_score(params, q, k):  # q [Lq, D], k [Lk, D] -> [Lq, Lk]
        return -jnp.abs(q[:, None, 0] - k[None, :, 0])

Registering a name that is already taken is an error (no silent overwrite).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

_REGISTRY: dict[str, dict[str, Any]] = {}
# Modules whose import registers the built-in members; imported lazily on first lookup so that
# `import attnlab.registry` stays cheap and there are no import cycles.
_BUILTIN_MODULES = ("attnlab.kernels", "attnlab.models", "attnlab.data")
_builtins_loaded = False


def _load_builtins() -> None:
  global _builtins_loaded
  if not _builtins_loaded:
    _builtins_loaded = True
    for module in _BUILTIN_MODULES:
      importlib.import_module(module)


def register(kind: str, name: str, obj: Any = None) -> Callable[[Any], Any] | Any:
  """Registers ``obj`` as ``name`` of ``kind``; without ``obj`` it is a decorator."""
  if not isinstance(kind, str) or not kind:
    raise ValueError(f"register: kind must be a non-empty string, got {kind!r}")
  if not isinstance(name, str) or not name:
    raise ValueError(f"register: name must be a non-empty string, got {name!r}")

  def _add(member: Any) -> Any:
    members = _REGISTRY.setdefault(kind, {})
    if name in members:
      raise ValueError(f"register: {kind} {name!r} is already registered; choose another name "
                       f"(registered {kind}s: {', '.join(sorted(members))})")
    members[name] = member
    return member

  return _add if obj is None else _add(obj)


def unregister(kind: str, name: str) -> None:
  """Removes a member (for tests and notebooks that re-run a registration cell)."""
  get(kind, name)
  del _REGISTRY[kind][name]


def kinds() -> list[str]:
  """All kinds that have at least one member."""
  _load_builtins()
  return sorted(_REGISTRY)


def names(kind: str) -> list[str]:
  """The registered names of ``kind``, sorted."""
  _load_builtins()
  if kind not in _REGISTRY:
    raise ValueError(f"unknown registry kind {kind!r}; valid kinds: {', '.join(sorted(_REGISTRY))}")
  return sorted(_REGISTRY[kind])


def get(kind: str, name: str) -> Any:
  """The member ``name`` of ``kind``; unknown names raise a ValueError listing the valid ones."""
  valid = names(kind)
  if name not in _REGISTRY[kind]:
    raise ValueError(f"unknown {kind} {name!r}; registered {kind}s: {', '.join(valid)}")
  return _REGISTRY[kind][name]
