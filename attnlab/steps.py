"""The compiled programs of a run: init, train chunk and validation, all vmapped over members.

A model is split once into a static ``graphdef`` and two state pytrees, ``params`` (nnx.Param) and
``rest`` (rng streams, REINFORCE baselines, ...). Every program below takes those states with a
leading member axis [M, ...], so all seeds of a run train in one compiled XLA program and a variant
compiles once, whatever the number of seeds. A member is a seed, or with a learning-rate grid of R
rates a (rate, seed) pair, rate-major (member r·S + s): the rate sits in the optimiser state
(``optax.inject_hyperparams``), and member r·S + s trains exactly as seed s alone at rate r would.

    init(keys [M], rates [M] or None)             -> params, rest, opt_state
    train_chunk(params, rest, opt, es, batches [K, ...], live [K], at)
        K optimiser steps after step ``at`` (lax.scan); a seed that is not ``es["active"]``, or a
        step with ``live`` False, leaves its state untouched (early-stopped seeds freeze inside the
        vmapped program). A seed whose loss or gradient (its global norm) is not finite keeps its
        last finite state and stops: ``es["diverged_at"]`` (-1 while it has not) and
        ``es["stopped_at"]`` get the step.
    validate(params, rest, es, batches [nb, ...], step)
        val metrics (mean over nb equal batches) and the per-seed early-stopping state ``es``:
        GAT's rule (Veličković et al. 2018): the patience counter resets when any of the chosen
        metrics is at least as good as its best so far; the best state is kept (jnp.where masks)
        when all of them are. Losses are minimised, other metrics maximised. It also follows the
        val learning curve of ``curve_metric`` while a member is active: ``curve_sum``/``curve_n``/
        ``curve_last`` (for its area, attnlab.tuning) and ``reach_step``, the first evaluation step at
        which it reached ``reach_value`` (-1 while it has not; never when ``reach_value`` is None).

Batches carry a seed axis after K/nb unless every seed sees the same data (``seed_axis=None`` for
training batches, ``eval_seed_axis=None`` for val/test: the usual case, evaluation sets are fixed);
the R rates of a member axis share their seeds' batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attnlab import _prng as prng
from attnlab.results import minimised


def make_optimizer(o: Any, steps: int, *, grid: bool = False) -> optax.GradientTransformation:
  """The optax chain of ``config.optim`` (see attnlab.config); with ``grid`` the peak rate is a
  hyperparameter in the state (``optax.inject_hyperparams``: ``opt_state.hyperparams``), so members
  of one vmapped program can train at different rates (their schedule: rate × the unit schedule)."""
  if not grid:
    return _chain(o, _schedule(o, steps, o.learning_rate))
  unit = _schedule(o, steps, 1.0)
  scaled = lambda lr: lr if isinstance(unit, float) else (lambda count: lr * unit(count))
  return optax.inject_hyperparams(lambda learning_rate: _chain(o, scaled(learning_rate)))(
      learning_rate=o.learning_rate)


def _schedule(o: Any, steps: int, lr: float) -> Any:
  warm = o.warmup_steps
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(steps, warm + 1))
  if warm > 0:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)],
                                [warm])
  return lr


def _chain(o: Any, schedule: Any) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
  if o.name == "adamw":
    parts.append(optax.adamw(schedule, o.b1, o.b2, weight_decay=o.weight_decay))
  else:
    if o.weight_decay > 0:  # L2 on the gradient, as PyTorch's weight_decay (GAT's recipe)
      parts.append(optax.add_decayed_weights(o.weight_decay))
    parts.append(optax.adam(schedule, o.b1, o.b2) if o.name == "adam"
                 else optax.sgd(schedule, momentum=o.b1 or None))
  return optax.chain(*parts)


def select(on: jax.Array, new: Any, old: Any) -> Any:
  """Leaf-wise ``where(on, new, old)`` for a scalar ``on`` (PRNG key leaves included)."""
  def pick(n, o):
    if jax.dtypes.issubdtype(n.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(n)
      data = jnp.where(on, jax.random.key_data(n), jax.random.key_data(o))
      return jax.random.wrap_key_data(data, impl=impl)
    return jnp.where(on, n, o)
  return jax.tree.map(pick, new, old)


def over_rates(fn: Callable, num_rates: int, data_args: tuple[int, ...], *,
               sequential: bool = False) -> Callable:
  """``fn`` vmapped over seeds [S] -> over members [R·S]: its state arguments are split [R, S],
  its ``data_args`` (batches, per seed or shared) are shared by the rates, outputs merged back.
  ``sequential`` runs the rates one after another (``lax.map``: the memory of one rate's seeds,
  for evaluation on big val sets) instead of vmapping them."""
  if num_rates == 1:
    return fn

  def over_members(*args):
    split = lambda t: jax.tree.map(lambda x: x.reshape((num_rates, -1) + x.shape[1:]), t)
    states = tuple(split(a) for i, a in enumerate(args) if i not in data_args)

    def one_rate(state):
      it = iter(state)
      return fn(*(a if i in data_args else next(it) for i, a in enumerate(args)))
    out = jax.lax.map(one_rate, states) if sequential else jax.vmap(one_rate)(states)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)
  return over_members


def curve_init(n: int) -> dict[str, jax.Array]:
  """The learning-curve state of ``n`` members before any evaluation (see ``follow_curve``)."""
  return {"reach_step": jnp.full((n,), -1, jnp.int32), "curve_sum": jnp.zeros((n,), jnp.float32),
          "curve_n": jnp.zeros((n,), jnp.int32), "curve_last": jnp.full((n,), jnp.nan, jnp.float32)}


def follow_curve(es: dict[str, jax.Array], value: jax.Array, step: Any, *, minimise: bool,
                 reach_value: float | None) -> dict[str, jax.Array]:
  """One evaluation of the curve metric (``value``) at ``step`` for members ``es["active"]``: adds it
  to the curve's sum and count, keeps it as the last value, and sets ``reach_step`` the first time
  it is >= ``reach_value`` (<= if ``minimise``); inactive (stopped) members are left as they are."""
  active = es["active"]
  hit = False if reach_value is None else (value <= reach_value if minimise else value >= reach_value)
  reached = active & (es["reach_step"] < 0) & hit
  return {"curve_sum": es["curve_sum"] + jnp.where(active, value, 0.0),
          "curve_n": es["curve_n"] + active.astype(jnp.int32),
          "curve_last": jnp.where(active, value, es["curve_last"]),
          "reach_step": jnp.where(reached, step, es["reach_step"])}


@dataclasses.dataclass
class Programs:
  graphdef: Any
  init: Callable
  train_chunk: Callable
  validate: Callable
  es_init: Callable


def build(model_cls: type, spec: dict, options: dict, family: str, tx: optax.GradientTransformation,
          *, es_metrics: tuple[str, ...], patience: int, seed_axis: int | None,
          eval_seed_axis: int | None, static_train: bool, metric_names: tuple[str, ...],
          num_rates: int = 1, curve_metric: str = "accuracy", reach_value: float | None = None
          ) -> Programs:
  """Builds the jitted programs for one run (see the module docstring)."""
  from attnlab import losses  # pylint: disable=g-import-not-at-top  (models helper's module)
  holder: dict[str, Any] = {}

  def init_one(key, lr):
    k_params, k_drop, k_attn = jax.random.split(key, 3)
    model = model_cls(spec=spec, rngs=nnx.Rngs(k_params, params=k_params, dropout=k_drop,
                                               attention=k_attn), **options)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    holder["graphdef"] = graphdef
    opt_state = tx.init(params)
    if lr is not None:  # a member of a rate grid: its own rate (make_optimizer(grid=True))
      opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
    return params, rest, opt_state

  init_members = jax.jit(jax.vmap(init_one))
  init = lambda keys, rates=None: init_members(keys, rates)
  jax.eval_shape(init, jax.random.split(prng.key(0), 1))  # sets the graphdef
  graphdef = holder["graphdef"]

  def loss_fn(params, rest, batch):
    model = nnx.merge(graphdef, params, rest, copy=True)
    loss, metrics = losses.loss_and_metrics(model, batch, family=family, train=True)
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    return loss, (metrics, new_rest)

  def step_one(params, rest, opt_state, batch, on):
    (loss, (metrics, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, batch)
    # One scalar for all leaves: the global norm is finite iff every gradient is (barring an
    # overflowing square), and XLA does not AND a flag per leaf inside every leaf's update.
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    on = on & finite
    return (select(on, new_params, params), select(on, new_rest, rest), select(on, new_opt, opt_state),
            metrics, finite)

  step_seeds = over_rates(jax.vmap(step_one, in_axes=(0, 0, 0, seed_axis, 0)), num_rates, (3,))

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

  eval_seeds = over_rates(jax.vmap(eval_one, in_axes=(0, 0, None if eval_seed_axis is None else 1)),
                          num_rates, (2,), sequential=True)

  def es_update(es, params, rest, metrics, step):
    better = [metrics[m] <= es["best"][m] if minimised(m) else metrics[m] >= es["best"][m]
              for m in es_metrics]
    active = es["active"]
    any_better = active & jnp.any(jnp.stack(better))
    save = active & jnp.all(jnp.stack(better))
    count = jnp.where(any_better, 0, es["count"] + active)
    better_of = lambda m: jnp.minimum if minimised(m) else jnp.maximum
    best = {m: jnp.where(any_better, better_of(m)(metrics[m], es["best"][m]),
                         es["best"][m]) for m in es_metrics}
    still = active & ((count < patience) if patience > 0 else True)
    return {
        **follow_curve(es, metrics[curve_metric], step, minimise=minimised(curve_metric),
                       reach_value=reach_value),
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
        "diverged_at": full(-1, jnp.int32), **curve_init(num_seeds),
        "best_metrics": {m: full(jnp.nan, jnp.float32) for m in metric_names},
        "best_params": params, "best_rest": rest,
    }

  return Programs(graphdef, init, jax.jit(train_chunk), jax.jit(validate), es_init)
