"""What every model shares: registration with kwarg checking, the REINFORCE state, attention maps.

* ``register_model(name)``: registers an ``nnx.Module`` class under kind ``model``. Its constructor
  takes ``spec`` (the task's), ``rngs``, ``attention`` (an ``AttentionSpec``: the whole attention
  category, passed on unchanged) and its own kwargs (the config's ``model.kwargs``); an unknown one
  is a ValueError that lists the valid kwargs with their defaults (the constructor keeps its
  signature, so ``attnlab.config.check_kwargs`` sees them too). A model whose class sets
  ``graph_attention = True`` (GAT) takes graph specs only, the others sequence specs only.
* ``Baseline``: the moving-average REINFORCE baseline, a non-Param ``nnx.Variable`` (it lives in
  the model's non-parameter state, is updated by ``attnlab.losses`` in training calls and never
  receives gradients).
* ``sowing()`` / ``sow_enabled()``: while ``sowing()`` is active, models sow their attention
  weights into ``nnx.Intermediate`` (``attention_maps`` in ``attnlab.models`` uses it). Outside it
  nothing is sown, so a training step never changes the model's state structure.
* ``hard_aux``: sums the hard target's per-query ``log_prob`` (and the weights' entropy) to [B].
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import kernels, registry
from attnlab.attention_spec import AttentionSpec

Array = jax.Array
_SOW = [False]


class Baseline(nnx.Variable):
  """Moving average of the REINFORCE reward: value [2] = (Σ_n decay^(t-n) (1-decay) r_n, 1 - decay^t)
  after t updates; ``value_now()`` is their ratio, the bias-corrected average (0 before any update)."""

  def value_now(self) -> Array:
    ema, weight = self[...][0], self[...][1]
    return jnp.where(weight > 0, ema / jnp.where(weight > 0, weight, 1.0), 0.0)

  def update(self, reward: Array, decay: float) -> None:
    ema, weight = self[...][0], self[...][1]
    self[...] = jnp.stack([decay * ema + (1.0 - decay) * reward, decay * weight + (1.0 - decay)])


def register_model(name: str) -> Callable[[type], type]:
  """Class decorator: registers ``cls`` as model ``name`` and checks its kwargs by name (the model
  contract: the ``attnlab.models`` docstring)."""

  def wrap(cls: type) -> type:
    if getattr(cls, "family", None) is None:
      raise TypeError(f"model {name!r}: class {cls.__name__} needs a class attribute `family`")
    init = cls.__init__
    params = inspect.signature(init).parameters
    fixed = ("spec", "rngs", "attention")
    if "attention" not in params:
      raise TypeError(f"model {name!r}: {cls.__name__}.__init__ needs a keyword argument "
                      f"`attention: AttentionSpec` (the attention category)")
    valid = {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in fixed}
    graph = getattr(cls, "graph_attention", False)

    @functools.wraps(init)
    def checked_init(self, *args: Any, **kwargs: Any) -> None:
      unknown = sorted(set(kwargs) - set(valid) - set(fixed))
      if args or unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items())
        what = (f"unknown kwarg(s) {', '.join(map(repr, unknown))}" if unknown
                else "kwargs are keyword arguments")
        raise ValueError(f"model {name!r}: {what}; valid kwargs: {listing} (and attention=AttentionSpec)")
      attention = kwargs.get("attention")
      if not isinstance(attention, AttentionSpec):
        raise TypeError(f"model {name!r}: attention must be an attnlab.AttentionSpec (a config's "
                        f"model.attention), got {type(attention).__name__}")
      if attention.graph != graph:
        raise ValueError(f"model {name!r} takes {'graph' if graph else 'sequence'} attention: set the "
                         f"spec's graph={graph} (model.attention.graph), got graph={attention.graph}")
      init(self, **kwargs)

    cls.__init__ = checked_init
    cls.name = name
    registry.register("model", name, cls)
    return cls

  return wrap


def check_spec(model: str, spec: dict, *keys: str) -> None:
  missing = [k for k in keys if k not in spec]
  if missing:
    raise ValueError(f"model {model!r}: the task spec lacks {missing} (got keys {sorted(spec)}); "
                     f"is the task of the model's family?")


@contextlib.contextmanager
def sowing() -> Iterator[None]:
  """Models sow their attention weights into nnx.Intermediate while this is active."""
  previous, _SOW[0] = _SOW[0], True
  try:
    yield
  finally:
    _SOW[0] = previous


def sow_enabled() -> bool:
  return _SOW[0]


def hard_aux(attn_aux: dict, weights: Array | None, query_mask: Array | None = None) -> dict:
  """REINFORCE terms of one attention call, summed per example.

  Args:
    attn_aux: the target's aux of ``MultiHeadAttention(..., return_aux=True)``: ``log_prob``
      [B, H, Lq] for the ``hard`` target (other targets: no ``log_prob`` -> ``{}``).
    weights: the weights α [B, H, Lq, Lk] (for the entropy bonus), or None.
    query_mask: [B, Lq] bool, queries whose sample matters (e.g. not PAD), or None (all).
  Returns:
    ``{"log_prob": [B], "entropy": [B]}`` or ``{}``.
  """
  if "log_prob" not in attn_aux:
    return {}
  keep = 1.0 if query_mask is None else query_mask[:, None, :].astype(jnp.float32)  # [B, 1, Lq]
  out = {"log_prob": jnp.sum(attn_aux["log_prob"] * keep, axis=(1, 2))}  # [B]
  if weights is not None:
    plogp = jnp.where(weights > 0, weights * jnp.log(jnp.where(weights > 0, weights, 1.0)), 0.0)
    out["entropy"] = jnp.sum(-jnp.sum(plogp, axis=-1) * keep, axis=(1, 2))  # [B]
  return out


def add_aux(total: dict, new: dict) -> dict:
  """Sums the [B] REINFORCE terms of several attention calls."""
  return {k: total.get(k, 0.0) + new.get(k, 0.0) for k in {**total, **new}}


def reinforce_state(model: nnx.Module, target: str, entropy_bonus: float,
                    baseline_decay: float) -> None:
  """Gives a model with a sampling target (``hard``) its baseline and REINFORCE hyper-parameters."""
  if not 0.0 <= baseline_decay < 1.0:
    raise ValueError(f"model {model.name!r}: baseline_decay must be in [0, 1), "
                     f"got {baseline_decay!r}")
  model.entropy_bonus = float(entropy_bonus)
  model.baseline_decay = float(baseline_decay)
  stochastic = kernels.get_target(target).stochastic
  model.baseline = Baseline(jnp.zeros((2,), jnp.float32)) if stochastic else nnx.data(None)
