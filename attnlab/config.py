"""The run-config schema, config-file loading and validation.

A run config is a locked ``ml_collections.ConfigDict`` (unknown keys and type changes are errors):

    task.name            registered task (``attnlab list``)
    task.kwargs          keyword arguments of the task factory ``make(**kwargs)``
    model.name           registered model; its ``family`` must be the task's
    model.kwargs         keyword arguments of the model constructor besides its attention (d_model, ...)
    model.attention      the attention category, an ``attnlab.AttentionSpec``: score, normalizer, target,
                         head_mode, head_merge, num_heads, num_kv_heads, dropout, impl, graph, and the
                         members' options score_kwargs / normalizer_kwargs / target_kwargs (open
                         sections: ``model.attention.score_kwargs.hidden=16`` adds the key; the
                         member's options are checked when the spec is made)
    optim.name           adam | adamw | sgd
    optim.learning_rate  peak learning rate
    optim.learning_rates  a grid of peak rates trained together with the seeds (one vmapped program,
                         member = (rate, seed)); each run keeps the rate with the best mean val
                         ``optim.select_metric`` over its seeds (attnlab.tuning). () = learning_rate alone
    optim.select_metric  the val metric the rate is chosen by (losses minimised, others maximised)
    optim.weight_decay   adam/sgd: L2 added to the gradient (PyTorch ``weight_decay``); adamw: decoupled
    optim.warmup_steps   linear warm-up from 0
    optim.schedule       constant | cosine (decay to 0 at train.steps)
    optim.clip_norm      global gradient-norm clip (0 = off)
    optim.b1, optim.b2   Adam betas (b1 = momentum for sgd)
    train.steps          optimiser steps
    train.batch_size     examples per step (ignored by node_classifier tasks: the graph is one batch)
    train.eval_every     steps between validation evaluations (early stopping counts these)
    train.eval_batch_size  largest evaluation batch (val/test are evaluated in equal batches)
    train.checkpoint_every  steps between orbax checkpoints (rounded up to evaluations; 0 = only at end)
    train.seeds          tuple of seeds, trained together in one vmapped program
    train.early_stopping.patience  evaluations without improvement before a seed stops (0 = off)
    train.early_stopping.metrics   comma-separated val metrics, e.g. "loss,accuracy" (GAT's rule)
    train.attention_maps  save attention weights of one val example (``attention.npz``) and the
                         fraction of exact zeros in the attention weights on val data, at the end
    train.reach_metric   the val metric of the learning-speed measures: steps to reach
    train.reach_value    (first evaluation at which it is >= the value, <= for losses; None = not
                         measured) and the area under its val curve (recorded always; attnlab.tuning)
    parallel.sequence    P, the devices that split the sequence (ring attention); the other n/P split
                         the batch: a [n/P, P] mesh (data, seq), attnlab.parallel. P > 1 needs
                         model.attention.impl='ring' and must divide the device count n. 0 (default):
                         all n devices with impl='ring', else 1 (data parallelism only)

Config files (``configs/*.py``) define ``get_config(arg=None)`` that starts from ``base_config()``.
Extra top-level scalar fields are allowed as aliases (``c.data_dir`` referenced by
``c.task.kwargs.data_dir = c.get_ref("data_dir")``). The sections once called ``task.knobs`` and
``model.options`` are refused with their new names (``results.RENAMED_KEYS``).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import pathlib
from typing import Any

import ml_collections
from ml_collections import config_dict

from attnlab import config_values, results
from attnlab import validate as validate_lib
from attnlab.attention_spec import AttentionSpec, SpecError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
SECTIONS = ("task", "model", "optim", "train", "parallel")
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = _PACKAGE_DIR.parent


class OptionsDict(ml_collections.ConfigDict):
  """A section that stays open when its config is locked: a member's keyword options
  (``model.attention.*_kwargs``), whose names are checked against the member by AttentionSpec.
  Set them one by one (``c.model.attention.score_kwargs.hidden = 16``) or with ``update``."""

  def lock(self) -> OptionsDict:
    return self


def attention_config() -> ml_collections.ConfigDict:
  """``model.attention``: every field of ``AttentionSpec()`` with its default, kwargs as OptionsDicts."""
  section = ml_collections.ConfigDict()
  for key, value in AttentionSpec().to_dict().items():
    if key.endswith("_kwargs"):
      section[key] = OptionsDict(value, type_safe=False)
    elif key == "num_kv_heads":  # None or an int (typed, so --config.model.attention.num_kv_heads=2 parses)
      section[key] = config_dict.placeholder(int)
      section[key] = value
    else:
      section[key] = value
  return section


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default; config files override task, model and the rest."""
  c = ml_collections.ConfigDict()
  c.task = ml_collections.ConfigDict({"name": "", "kwargs": {}})
  c.model = ml_collections.ConfigDict({"name": "", "kwargs": {}})
  c.model.attention = attention_config()
  c.optim = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 1e-3, "learning_rates": (), "select_metric": "accuracy",
      "weight_decay": 0.0, "warmup_steps": 0, "schedule": "constant", "clip_norm": 0.0, "b1": 0.9,
      "b2": 0.999})
  c.train = ml_collections.ConfigDict({
      "steps": 1000, "batch_size": 32, "eval_every": 100, "eval_batch_size": 1024,
      "checkpoint_every": 0, "seeds": (0,), "attention_maps": True,
      "early_stopping": {"patience": 0, "metrics": "accuracy"},
      "reach_metric": "accuracy", "reach_value": ml_collections.config_dict.placeholder(float)})
  c.parallel = ml_collections.ConfigDict({"sequence": 0})
  return c


def resolve_path(path: str) -> pathlib.Path:
  """A config path as given, else relative to the repository root (``configs/...`` from anywhere)."""
  p = pathlib.Path(path).expanduser()
  if p.exists():
    return p.resolve()
  alt = REPO_ROOT / path
  if not p.is_absolute() and alt.exists():
    return alt.resolve()
  raise FileNotFoundError(f"config file {path!r} not found (looked in {os.getcwd()} and {REPO_ROOT})")


def load_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Imports a config file and returns ``get_config(arg)`` (``path`` may be ``file.py:arg``)."""
  if arg is None and ":" in path and not pathlib.Path(path).exists():
    path, arg = path.split(":", 1)
  file = resolve_path(path)
  spec = importlib.util.spec_from_file_location(f"_attnlab_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ValueError(f"config file {str(file)!r}: syntax error at line {e.lineno}: {e.msg}") from e
  except Exception as e:
    raise ValueError(f"config file {str(file)!r} raised {type(e).__name__}: {e}") from e
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"config file {str(file)!r} has no get_config(arg=None)")
  params = inspect.signature(module.get_config).parameters
  try:
    config = module.get_config(arg) if params else module.get_config()
  except Exception as e:
    raise ValueError(f"config file {str(file)!r}: get_config({arg!r}) raised {type(e).__name__}: "
                     f"{e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"config file {str(file)!r}: get_config() returned {type(config).__name__}, "
                     "not an ml_collections.ConfigDict")
  return config


def _check_keys(where: str, got: ml_collections.ConfigDict, want: ml_collections.ConfigDict) -> None:
  for key in got.keys():
    if key not in want:
      _refuse_renamed(f"{where}{key}")
      raise ValueError(f"config: unknown key {where}{key!r}; valid keys in {where.rstrip('.') or 'config'}: "
                       f"{', '.join(sorted(want.keys()))}")
    if isinstance(want[key], ml_collections.ConfigDict) and key not in ("kwargs", "attention"):
      if not isinstance(got[key], ml_collections.ConfigDict):
        raise TypeError(f"config: {where}{key} must be a section, got {type(got[key]).__name__}")
      _check_keys(f"{where}{key}.", got[key], want[key])
    elif not isinstance(want[key], ml_collections.ConfigDict) and want[key] is not None:
      ok = type(want[key])
      value = got[key]
      if ok is float and isinstance(value, int) and not isinstance(value, bool):
        continue
      if not isinstance(value, ok) or (ok is int and isinstance(value, bool)):
        raise TypeError(f"config: {where}{key} must be {ok.__name__}, got {value!r} "
                        f"({type(value).__name__})")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks keys, types, choices and that every number is finite and in its range (``config_values``);
  raises ValueError/TypeError naming the key."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise TypeError(f"config must be an ml_collections.ConfigDict, got {type(config).__name__}")
  base = base_config()
  for section in SECTIONS:
    if section not in config:
      raise ValueError(f"config: missing section {section!r} (start config files from "
                       f"attnlab.config.base_config())")
    _check_keys(f"{section}.", config[section], base[section])
  for key in config.keys():
    if key not in SECTIONS and isinstance(config[key], ml_collections.ConfigDict):
      raise ValueError(f"config: unknown section {key!r}; sections: {', '.join(SECTIONS)} "
                       f"(extra top-level fields must be scalars used as aliases)")
  if not config.task.name:
    raise ValueError("config: task.name is empty; set it to a registered task (`attnlab list`)")
  if not config.model.name:
    raise ValueError("config: model.name is empty; set it to a registered model (`attnlab list`)")
  check_parallel(config)
  if attention_spec(config).impl == "ring" and config.train.attention_maps:
    raise ValueError("config: model.attention.impl='ring' never forms the attention weights, so "
                     "train.attention_maps must be False")
  validate_lib.choice("config", "optim.name", config.optim.name, OPTIMIZERS, bare=True)
  validate_lib.choice("config", "optim.schedule", config.optim.schedule, SCHEDULES, bare=True)
  for key in ("steps", "batch_size", "eval_every", "eval_batch_size"):
    validate_lib.int_at_least("config", f"train.{key}", config.train[key], 1)
  seeds = config.train.seeds
  if (not isinstance(seeds, (tuple, list)) or not seeds
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
      or len(set(seeds)) != len(seeds)):
    raise ValueError(f"config: train.seeds must be a non-empty tuple of distinct ints >= 0, got {seeds!r}")
  if config.train.early_stopping.patience < 0:
    raise ValueError("config: train.early_stopping.patience must be >= 0 (0 = off)")
  for section, key in (("optim", "warmup_steps"), ("train", "checkpoint_every")):
    validate_lib.int_at_least("config", f"{section}.{key}", config[section][key], 0)
  config_values.check_numbers(to_dict(config))
  config_values.check_tuning(config)
  if not early_stopping_metrics(config):
    raise ValueError("config: train.early_stopping.metrics is empty; e.g. 'accuracy' or 'loss,accuracy'")


# Sections added to the schema later, with their defaults: a saved config (a run's config.json, a
# sweep's fingerprint) from before one existed ran with these.
ADDED_SECTIONS = {"parallel": {"sequence": 0}}


def with_added_sections(cfg: dict[str, Any]) -> dict[str, Any]:
  """A saved config dict with the ``ADDED_SECTIONS`` it lacks, at their defaults."""
  return {**{k: v for k, v in ADDED_SECTIONS.items() if k not in cfg}, **cfg}


def without_default_added_sections(cfg: dict[str, Any]) -> dict[str, Any]:
  """A config dict without the ``ADDED_SECTIONS`` left at their defaults (as saved before they existed)."""
  return {k: v for k, v in cfg.items() if ADDED_SECTIONS.get(k) != v}


def check_parallel(config: ml_collections.ConfigDict) -> None:
  """parallel.sequence: an int >= 0 (0 = automatic), above 1 only with ring attention; whether it
  divides the device count is checked when the mesh is made (attnlab.parallel.sequence_size)."""
  p, impl = config.parallel.sequence, config.model.attention.impl
  if isinstance(p, bool) or not isinstance(p, int) or p < 0:
    raise ValueError(f"config: parallel.sequence must be a positive int (the devices that split the "
                     f"sequence) or 0 (all devices with model.attention.impl='ring', else 1), got {p!r}")
  if p > 1 and impl != "ring":
    raise ValueError(f"config: parallel.sequence={p} splits the sequence over devices, which needs "
                     f"model.attention.impl='ring' (got {impl!r}); valid: parallel.sequence 0 or 1 "
                     f"with impl={impl!r}, any P dividing the device count with impl='ring'")


def early_stopping_metrics(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(m.strip() for m in config.train.early_stopping.metrics.split(",") if m.strip())


def attention_spec(config: ml_collections.ConfigDict) -> AttentionSpec:
  """The AttentionSpec of ``model.attention``; a bad field is a ValueError naming its config key."""
  try:
    return AttentionSpec.from_config(config.model.attention)
  except SpecError as e:
    raise e.named("config: model.attention.") from None


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model constructor's keyword arguments: ``model.kwargs`` and ``attention`` (the spec)."""
  return {**config.model.kwargs.to_dict(), "attention": attention_spec(config)}


def check_kwargs(what: str, fn: Any, kwargs: dict[str, Any], key: str) -> None:
  """Unknown keyword arguments for ``fn`` -> ValueError naming them and listing the accepted ones."""
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return
  valid = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
           and n not in ("self", "spec", "rngs", "attention")]
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    hint = (f" (the attention category is model.attention: {', '.join(AttentionSpec.__dataclass_fields__)})"
            if key == "model.kwargs" else "")
    raise ValueError(f"config: unknown {key} {', '.join(map(repr, unknown))} for {what}; "
                     f"valid: {', '.join(valid) or '(none)'}{hint}")


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-friendly dict of the config (tuples become lists)."""
  return _jsonable(config.to_dict())


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  return x


def _refuse_renamed(key: str) -> None:
  """A ValueError naming the current key if ``key`` is under a renamed section (task.knobs...)."""
  new = results.current_key(key)
  if new != key:
    raise ValueError(f"config: {key!r} is now {new!r} (task.knobs and model.options were renamed "
                     f"task.kwargs and model.kwargs)")


def _locate(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  """The parent node of dotted ``key`` and its last part; ValueError naming the key if missing."""
  _refuse_renamed(key)
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    if i == len(parts) - 1 and isinstance(node, OptionsDict):
      break  # a member's options: new keys are checked by AttentionSpec
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = ".".join(parts[:i]) or "config"
      valid = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "(none)"
      moved = (f"; the attention category is model.attention.{part}"
               if where == "model.kwargs" and part in AttentionSpec.__dataclass_fields__ else "")
      raise ValueError(f"config: unknown key {key!r} ({part!r} not in {where}; valid: {valid}){moved}")
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def check_key(config: ml_collections.ConfigDict, key: str) -> None:
  _locate(config, key)


def set_dotted(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """``config['a.b.c'] = value`` with an error naming the key if a part does not exist."""
  node, last = _locate(config, key)
  try:
    node[last] = value
  except TypeError as e:
    raise TypeError(f"config: {key}: {e}") from None
