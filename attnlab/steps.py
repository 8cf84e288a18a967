"""The compiled programs of a run: init, train chunk and validation, all vmapped over seeds.

A model is split once into a static ``graphdef`` and two state pytrees, ``params`` (nnx.Param) and
``rest`` (rng streams, REINFORCE baselines, ...). Every program below takes those states with a
leading seed axis [S, ...], so all seeds of a run train in one compiled XLA program and a variant
compiles once, whatever the number of seeds:

    init(keys [S])                                -> params, rest
    train_chunk(params, rest, opt, es, batches [K, ...], live [K], at)
        K optimiser steps after step ``at`` (lax.scan); a seed that is not ``es["active"]``, or a
        step with ``live`` False, leaves its state untouched (early-stopped seeds freeze inside the
        vmapped program). A seed whose loss or gradient is not finite keeps its last finite state
        and stops: ``es["diverged_at"]`` (-1 while it has not) and ``es["stopped_at"]`` get the step.
    validate(params, rest, es, batches [nb, ...], step)
        val metrics (mean over nb equal batches) and the per-seed early-stopping state ``es``:
        GAT's rule (Veličković et al. 2018): the patience counter resets when any of the chosen
        metrics is at least as good as its best so far; the best state is kept (jnp.where masks)
        when all of them are. Losses are minimised, other metrics maximised.

Batches carry a seed axis after K/nb unless every seed sees the same data (``seed_axis=None`` for
training batches, ``eval_seed_axis=None`` for val/test: the usual case, evaluation sets are fixed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attnlab import prng


def make_optimizer(o: Any, steps: int) -> optax.GradientTransformation:
  """The optax chain of ``config.optim`` (see attnlab.config)."""
  lr, warm = o.learning_rate, o.warmup_steps
  if o.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(steps, warm + 1))
  elif warm > 0:
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)],
                                    [warm])
  else:
    schedule = lr
  parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
  if o.name == "adamw":
    parts.append(optax.adamw(schedule, o.b1, o.b2, weight_decay=o.weight_decay))
  else:
    if o.weight_decay > 0:  # L2 on the gradient, as PyTorch's weight_decay (GAT's recipe)
      parts.append(optax.add_decayed_weights(o.weight_decay))
    parts.append(optax.adam(schedule, o.b1, o.b2) if o.name == "adam"
                 else optax.sgd(schedule, momentum=o.b1 or None))
  return optax.chain(*parts)


def minimised(metric: str) -> bool:
  return "loss" in metric or "error" in metric or "perplexity" in metric


def select(on: jax.Array, new: Any, old: Any) -> Any:
  """Leaf-wise ``where(on, new, old)`` for a scalar ``on`` (PRNG key leaves included)."""
  def pick(n, o):
    if jax.dtypes.issubdtype(n.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(n)
      data = jnp.where(on, jax.random.key_data(n), jax.random.key_data(o))
      return jax.random.wrap_key_data(data, impl=impl)
    return jnp.where(on, n, o)
  return jax.tree.map(pick, new, old)


@dataclasses.dataclass
class Programs:
  graphdef: Any
  init: Callable
  train_chunk: Callable
  validate: Callable
  es_init: Callable


def build(model_cls: type, spec: dict, options: dict, family: str, tx: optax.GradientTransformation,
          *, es_metrics: tuple[str, ...], patience: int, seed_axis: int | None,
          eval_seed_axis: int | None, static_train: bool, metric_names: tuple[str, ...]) -> Programs:
  """Builds the jitted programs for one run (see the module docstring)."""
  from attnlab import losses  # pylint: disable=g-import-not-at-top  (models helper's module)
  holder: dict[str, Any] = {}

  def init_one(key):
    k_params, k_drop, k_attn = jax.random.split(key, 3)
    model = model_cls(spec=spec, rngs=nnx.Rngs(k_params, params=k_params, dropout=k_drop,
                                               attention=k_attn), **options)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    holder["graphdef"] = graphdef
    return params, rest, tx.init(params)

  init = jax.jit(jax.vmap(init_one))
  jax.eval_shape(init, jax.random.split(prng.key(0), 1))  # sets the graphdef
  graphdef = holder["graphdef"]

  def loss_fn(params, rest, batch):
    model = nnx.merge(graphdef, params, rest, copy=True)
    loss, metrics = losses.loss_and_metrics(model, batch, family=family, train=True)
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    return loss, (metrics, new_rest)

  def step_one(params, rest, opt_state, batch, on):
    (loss, (metrics, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, batch)
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g))
                                                     for g in jax.tree.leaves(grads)]))
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    on = on & finite
    return (select(on, new_params, params), select(on, new_rest, rest), select(on, new_opt, opt_state),
            metrics, finite)

  step_seeds = jax.vmap(step_one, in_axes=(0, 0, 0, seed_axis, 0))

  def train_chunk(params, rest, opt_state, es, batches, live, at):
    def body(carry, xs):
      p, r, o, on, diverged_at = carry
      batch, is_live, k = (batches, *xs) if static_train else xs
      p, r, o, m, finite = step_seeds(p, r, o, batch, on & is_live)
      bad = on & is_live & ~finite
      return (p, r, o, on & ~bad, jnp.where(bad, at + k + 1, diverged_at)), m
    ks = jnp.arange(live.shape[0])
    xs = (live, ks) if static_train else (batches, live, ks)
    carry = (params, rest, opt_state, es["active"], es["diverged_at"])
    (params, rest, opt_state, on, diverged_at), metrics = jax.lax.scan(body, carry, xs)
    stopped = es["active"] & ~on
    es = {**es, "active": on, "diverged_at": diverged_at,
          "stopped_at": jnp.where(stopped, diverged_at, es["stopped_at"])}
    return params, rest, opt_state, es, metrics  # metrics: {name: [K, S]}

  def eval_one(params, rest, batches):
    def body(_, batch):
      model = nnx.merge(graphdef, params, rest, copy=True)
      _, metrics = losses.loss_and_metrics(model, batch, family=family, train=False)
      return None, {m: metrics[m] for m in metric_names}  # the task's metrics (val/test)
    _, metrics = jax.lax.scan(body, None, batches)
    return jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

  eval_seeds = jax.vmap(eval_one, in_axes=(0, 0, None if eval_seed_axis is None else 1))

  def es_update(es, params, rest, metrics, step):
    better = [metrics[m] <= es["best"][m] if minimised(m) else metrics[m] >= es["best"][m]
              for m in es_metrics]
    active = es["active"]
    any_better = active & jnp.any(jnp.stack(better))
    save = active & jnp.all(jnp.stack(better))
    count = jnp.where(any_better, 0, es["count"] + active)
    best = {m: jnp.where(any_better, (jnp.minimum if minimised(m) else jnp.maximum)(metrics[m], es["best"][m]),
                         es["best"][m]) for m in es_metrics}
    still = active & ((count < patience) if patience > 0 else True)
    return {
        "best": best, "count": count, "active": still,
        "stopped_at": jnp.where(active & ~still, step, es["stopped_at"]), "diverged_at": es["diverged_at"],
        "best_step": jnp.where(save, step, es["best_step"]),
        "best_metrics": select(save, metrics, es["best_metrics"]),
        "best_params": select(save, params, es["best_params"]),
        "best_rest": select(save, rest, es["best_rest"]),
    }

  def validate(params, rest, es, batches, step):
    metrics = eval_seeds(params, rest, batches)
    return jax.vmap(es_update, in_axes=(0, 0, 0, 0, None))(es, params, rest, metrics, step), metrics

  def es_init(params, rest, steps):
    num_seeds = jax.tree.leaves(params)[0].shape[0]
    full = lambda v, dtype: jnp.full((num_seeds,), v, dtype)
    return {
        "best": {m: full(jnp.inf if minimised(m) else -jnp.inf, jnp.float32) for m in es_metrics},
        "count": full(0, jnp.int32), "active": full(True, bool),
        "stopped_at": full(steps, jnp.int32), "best_step": full(0, jnp.int32),
        "diverged_at": full(-1, jnp.int32),
        "best_metrics": {m: full(jnp.nan, jnp.float32) for m in metric_names},
        "best_params": params, "best_rest": rest,
    }

  return Programs(graphdef, init, jax.jit(train_chunk), jax.jit(validate), es_init)
