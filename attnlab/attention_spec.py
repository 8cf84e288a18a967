"""``AttentionSpec``: one attention category as one frozen, validated value, from config to kernel.

    spec = AttentionSpec(score="additive", score_kwargs={"hidden": 16}, normalizer="sigmoid",
                         normalizer_kwargs={"bias": -2.0}, num_heads=4)
    layer = modules.MultiHeadAttention(spec.num_heads, 64, attention=spec, rngs=nnx.Rngs(0))

| field | default | meaning |
|---|---|---|
| ``score``, ``normalizer``, ``target`` | scaled_dot, softmax, soft | registered names (``attnlab list``) |
| ``score_kwargs``, ``normalizer_kwargs``, ``target_kwargs`` | {} | the members' own options (below) |
| ``head_mode``, ``head_merge`` | split, concat | split or copy heads (Vaswani / GAT); concat or mean merge |
| ``num_heads``, ``num_kv_heads`` | 1, None | query heads; key/value heads (GQA/MQA; None = num_heads) |
| ``dropout`` | 0.0 | dropout on the attention weights while training |
| ``impl`` | auto | the kernel's implementation: auto, dense, blocked or ring (attnlab.kernels.attention) |
| ``graph`` | False | graph attention (GraphAttention, GAT): ``score`` is a registered ``graph_score`` |

A member's options are the keyword arguments of its kernel function: additive's and concat's
``hidden`` (score init), sigmoid's ``bias``, hard_st's ``temperature`` (``member_options``).
Construction checks every field and raises a ValueError naming it and its valid choices (a
member's unknown option lists the options it has). The spec is frozen and hashable (the kwargs are
read-only mappings), so layers keep it as static structure and pass it on unchanged. Run configs set
it as ``model.attention.<field>`` (a member's option: ``model.attention.normalizer_kwargs.bias``);
``from_config``/``to_dict`` convert, ``replace`` changes fields and checks again. A layer that cannot
honour a field refuses it with ``require`` instead of ignoring it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Iterator, Mapping

from attnlab import registry

HEAD_MODES = ("split", "copy")
HEAD_MERGES = ("concat", "mean")
_KWARGS = {"score_kwargs": "score", "normalizer_kwargs": "normalizer", "target_kwargs": "target"}
_CALL_ARGS = ("rng", "deterministic")  # targets' call arguments, not options


class SpecError(ValueError):
  """A bad field: ``field`` (e.g. ``score`` or ``score_kwargs.hidden``) and what is wrong with it."""

  def __init__(self, field: str, detail: str):
    super().__init__(f"AttentionSpec.{field}: {detail}")
    self.field, self.detail = field, detail

  def named(self, prefix: str) -> ValueError:
    """The same error for the caller's name of the spec, e.g. ``config: model.attention.``."""
    return ValueError(f"{prefix}{self.field}: {self.detail}")


class Options(Mapping):
  """A member's keyword options: a read-only, hashable mapping (sorted by name)."""

  __slots__ = ("_items",)

  def __init__(self, items: Mapping[str, Any] | None = None, *, field: str = "kwargs"):
    if items is not None and not isinstance(items, Mapping) and not hasattr(items, "items"):
      raise SpecError(field, f"must be a mapping of option names to values, got {type(items).__name__}")
    pairs = []
    for key, value in dict(items or {}).items():
      if not isinstance(key, str):
        raise SpecError(field, f"option names must be strings, got {key!r}")
      value = tuple(value) if isinstance(value, list) else value
      try:
        hash(value)
      except TypeError:
        raise SpecError(f"{field}.{key}", f"must be a constant (number, string, bool, None or tuple), "
                        f"got {type(value).__name__}") from None
      pairs.append((key, value))
    self._items = tuple(sorted(pairs))

  def __getitem__(self, key: str) -> Any:
    for k, v in self._items:
      if k == key:
        return v
    raise KeyError(key)

  def __iter__(self) -> Iterator[str]:
    return (k for k, _ in self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __hash__(self) -> int:
    return hash(self._items)

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

  def __repr__(self) -> str:
    return repr(dict(self._items))


def member_options(kind: str, name: str) -> dict[str, Any] | None:
  """The keyword options of registered member ``name`` of ``kind`` with their defaults (None: any).

  Scores: the arguments of their ``init(rng, dim, ...)``; normalizers: of ``fn(scores, mask, ...)``;
  targets: of ``fn(weights, value, ..., rng, deterministic)``; graph scores take none.
  """
  from attnlab import kernels  # pylint: disable=g-import-not-at-top  (kernels register the members)
  fn = {"score": lambda: kernels.get_score(name).init,
        "graph_score": lambda: kernels.get_graph_score(name).init,
        "normalizer": lambda: kernels.get_normalizer(name).fn,
        "target": lambda: kernels.get_target(name).fn}[kind]()
  if fn is None:
    return {}
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):
    return None
  if any(p.kind is p.VAR_KEYWORD for p in params):
    return None
  return {p.name: p.default for p in params[2:]
          if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _CALL_ARGS}


def _choice(field: str, value: Any, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise SpecError(field, f"unknown value {value!r}; valid choices: {', '.join(map(repr, valid))}")


def _registered(field: str, kind: str, value: Any) -> None:
  valid = registry.names(kind)
  what = kind.replace("_", " ")
  if not isinstance(value, str) or value not in valid:
    raise SpecError(field, f"unknown {what} {value!r}; registered {what}s: {', '.join(valid)}")


def _positive_int(field: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise SpecError(field, f"must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """One attention category (see the module docstring for the fields)."""

  score: str = "scaled_dot"
  normalizer: str = "softmax"
  target: str = "soft"
  head_mode: str = "split"
  head_merge: str = "concat"
  num_heads: int = 1
  num_kv_heads: int | None = None
  score_kwargs: Mapping[str, Any] = Options()
  normalizer_kwargs: Mapping[str, Any] = Options()
  target_kwargs: Mapping[str, Any] = Options()
  dropout: float = 0.0
  impl: str = "auto"
  graph: bool = False

  def __post_init__(self):
    for field in _KWARGS:
      value = getattr(self, field)
      if not isinstance(value, Options):
        object.__setattr__(self, field, Options(value, field=field))
    if isinstance(self.dropout, int) and not isinstance(self.dropout, bool):
      object.__setattr__(self, "dropout", float(self.dropout))
    self.validate()

  @property
  def score_kind(self) -> str:
    """The registry kind of ``score``: ``graph_score`` for graph attention, else ``score``."""
    return "graph_score" if self.graph else "score"

  def validate(self) -> None:
    """Checks every field; a SpecError (ValueError) names the field and its valid choices."""
    from attnlab.kernels.attention import IMPLS  # pylint: disable=g-import-not-at-top
    if not isinstance(self.graph, bool):
      raise SpecError("graph", f"must be True or False, got {self.graph!r}")
    _registered("score", self.score_kind, self.score)
    _registered("normalizer", "normalizer", self.normalizer)
    _registered("target", "target", self.target)
    _choice("head_mode", self.head_mode, HEAD_MODES)
    _choice("head_merge", self.head_merge, HEAD_MERGES)
    _choice("impl", self.impl, IMPLS)
    _positive_int("num_heads", self.num_heads)
    if self.num_kv_heads is not None:
      _positive_int("num_kv_heads", self.num_kv_heads)
      if self.num_heads % self.num_kv_heads:
        raise SpecError("num_kv_heads", f"{self.num_kv_heads} must divide num_heads ({self.num_heads})")
    if (isinstance(self.dropout, bool) or not isinstance(self.dropout, float)
        or not 0.0 <= self.dropout < 1.0):
      raise SpecError("dropout", f"must be a float in [0, 1), got {self.dropout!r}")
    for field, member_field in _KWARGS.items():
      kind = self.score_kind if member_field == "score" else member_field
      name = getattr(self, member_field)
      valid = member_options(kind, name)
      unknown = [k for k in getattr(self, field) if valid is not None and k not in valid]
      if unknown:
        has = (f"its options: {', '.join(f'{k} (default {v!r})' for k, v in valid.items())}" if valid
               else "it takes no options")
        raise SpecError(f"{field}.{unknown[0]}", f"unknown option of {kind.replace('_', ' ')} "
                        f"{name!r}; {has}")

  @classmethod
  def from_config(cls, config: Any) -> AttentionSpec:
    """The spec of a ``model.attention`` ConfigDict or a dict (missing fields take the defaults)."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
      raise SpecError(unknown[0], f"unknown field; the fields are {', '.join(fields)}")
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    """Plain values (the kwargs as dicts): ``AttentionSpec.from_config(spec.to_dict()) == spec``."""
    return {f.name: dict(getattr(self, f.name)) if f.name in _KWARGS else getattr(self, f.name)
            for f in dataclasses.fields(self)}

  def replace(self, **changes: Any) -> AttentionSpec:
    """A copy with ``changes`` (checked like a new spec)."""
    return dataclasses.replace(self, **changes)

  def require(self, who: str, **supported: tuple[Any, ...]) -> None:
    """Refuses a field ``who`` cannot honour: ``supported`` maps a field to the values ``who`` takes."""
    for field, values in supported.items():
      value = getattr(self, field)
      if value not in values:
        raise ValueError(f"{who} cannot honour attention {field}={value!r}; it supports "
                         f"{field} in ({', '.join(map(repr, values))})")
