"""One training run: ``train_and_evaluate(config, workdir)``, all seeds (× learning rates) in one
vmapped program.

Writes to ``workdir`` (held by one process at a time: attnlab.runlock):

* ``config.json``   the run's config (a restart with a different config is refused);
* ``metrics.jsonl`` one line per train step and per evaluation: ``{"step", "split", metric: [per member]}``
  (a member is a seed, or with ``optim.learning_rates`` a (rate, seed) pair, rate-major);
* ``checkpoints/``  orbax checkpoints every ``train.checkpoint_every`` steps and at the end; a
  restarted run resumes from the newest readable one (metrics.jsonl is cut back to it);
* ``attention.npz`` attention weights of one val example, the first seed at the chosen rate
  (``train.attention_maps``, which also records ``attention_sparsity``: attnlab.sparsity); for
  image tasks also ``example.npz``, that example's batch entries (image, question, label);
* ``result.json``   per split (val, test) and metric: ``per_seed``, ``mean``, ``std`` (ddof=1), ``n``;
  with early stopping the val/test values are those of each seed's best-val state. ``status`` per
  seed: "ok", or "diverged at step N" when its training loss or gradient stopped being finite (the
  seed stopped there; its metrics are null and left out of mean and std). These are at the chosen
  ``learning_rate``; ``reach``/``reach_step``/``auc`` measure learning speed and ``tuning`` holds
  every rate of a grid (attnlab.tuning).

Finishing is idempotent: the final checkpoint (reused if it exists), attention.npz and, last,
result.json (the mark of a finished run) are each written whole, so a run interrupted anywhere is
finished by running it again, to the same result.

The devices form a [n/P, P] mesh (axes data, seq; ``run_mesh``): P = ``parallel.sequence`` devices split
the sequence (ring attention, attnlab.kernels.ring), the n/P groups the batch (attnlab.parallel). The
persistent JAX compilation cache is on unless ``ATTNLAB_CACHE_DIR=off`` (default ``~/.cache/attnlab/jax``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from attnlab import _prng as prng
from attnlab import checkpoints, models, parallel, registry, results, rundir, runlock, sparsity, steps
from attnlab import tuning
from attnlab import config as config_lib
from attnlab.rundata import RunData


def enable_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache unless one is set or ATTNLAB_CACHE_DIR=off."""
  where = os.environ.get("ATTNLAB_CACHE_DIR", str(pathlib.Path("~/.cache/attnlab/jax").expanduser()))
  if where.lower() in ("", "off", "0", "none") or jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", where)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def is_primary() -> bool:
  """Only JAX process 0 writes files (every process computes; multi-host runs)."""
  return jax.process_index() == 0


def make_task(config: ml_collections.ConfigDict) -> Any:
  factory = registry.get("task", config.task.name)
  kwargs = config.task.kwargs.to_dict()
  config_lib.check_kwargs(f"task {config.task.name!r}", factory, kwargs, "task.kwargs")
  return factory(**kwargs)


def model_class(config: ml_collections.ConfigDict, task: Any) -> type:
  cls = registry.get("model", config.model.name)
  family = getattr(cls, "family", None)
  if family != task.family:
    fitting = [n for n in registry.names("model") if getattr(registry.get("model", n), "family", None)
               == task.family]
    raise ValueError(f"config: model {config.model.name!r} (family {family!r}) cannot learn task "
                     f"{task.name!r} (family {task.family!r}); models of that family: {', '.join(fitting)}")
  config_lib.check_kwargs(f"model {config.model.name!r}", cls.__init__, config.model.kwargs.to_dict(),
                          "model.kwargs")
  return cls


def run_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The run's [n/P, P] mesh (data, seq) over all n devices, P from ``parallel.sequence``; a
  ValueError naming both numbers when P does not divide n."""
  ring = config.model.attention.impl == "ring"
  try:
    p = parallel.sequence_size(config.parallel.sequence, ring, jax.device_count())
  except ValueError as e:
    raise ValueError(f"config: {e}") from None
  return parallel.make_mesh(sequence=p)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config.train.seeds`` together, evaluates val/test, writes ``workdir``; returns result.

  Raises runlock.RunBusy if another process is running in ``workdir``.
  """
  config_lib.validate(config)
  mesh = run_mesh(config)
  enable_compilation_cache()
  workdir = results.make_dir(workdir)
  with runlock.hold(workdir) if is_primary() else contextlib.nullcontext():
    rundir.check_config(workdir, config_lib.to_dict(config), write=is_primary())
    done = rundir.finished(workdir)
    if done is not None:
      logging.info("%s: already finished, result.json kept", workdir)
      return done
    ring = config.model.attention.impl == "ring"  # the kernel finds the seq axis in the set mesh
    with jax.set_mesh(mesh) if ring else contextlib.nullcontext():
      return _train(config, workdir, mesh)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path,
           mesh: jax.sharding.Mesh) -> dict[str, Any]:
  start_time = time.time()
  task = make_task(config)
  cls = model_class(config, task)
  seeds = list(config.train.seeds)
  total, every = config.train.steps, config.train.eval_every
  data = RunData(task, config, seeds, mesh)
  prog, keys, rates = programs(config, task, cls, data)
  params, rest, opt_state = prog.init(keys, rates)
  lrs = tuning.rates(config.optim)
  es = prog.es_init(params, rest, total)
  state = parallel.replicate((params, rest, opt_state, es), mesh)
  step, ckpt_dir = 0, workdir / "checkpoints"
  restored = checkpoints.restore(ckpt_dir, state)
  if restored is not None:
    step, state = restored[0], parallel.replicate(restored[1], mesh)
    logging.info("%s: resumed from step %d", workdir, step)
  metrics_path = workdir / "metrics.jsonl"
  if is_primary():
    rundir.trim_metrics(metrics_path, step)
  val = None
  next_ckpt = step + config.train.checkpoint_every if config.train.checkpoint_every else None

  all_live = jnp.ones((every,), bool)  # made once: host work per chunk slows the device (2 cores)

  def chunk(state, at, batches):
    """Dispatches the steps after ``at`` and their validation; nothing waits for the device."""
    params, rest, opt_state, es = state
    live = all_live if at + every <= total else jnp.arange(at, at + every) < total
    params, rest, opt_state, es, train_m = prog.train_chunk(params, rest, opt_state, es, batches, live,
                                                            at)
    n = min(every, total - at)
    es, val = prog.validate(params, rest, es, data.eval["val"], at + n)
    return (params, rest, opt_state, es), train_m, val, n

  running, next_log = None, 0.0
  diverged = np.asarray(jax.device_get(state[3]["diverged_at"])) >= 0
  if step < total and bool(np.any(jax.device_get(state[3]["active"]))):
    running = chunk(state, step, data.train(step, every, total))
  with results.writing(metrics_path), open(metrics_path if is_primary() else os.devnull, "a") as log:
    while running is not None:
      new_state, train_m, val, n = running
      # The next chunk is dispatched before this one is read (its seeds' on-flags stay on the
      # device), so the device never waits for the host; dropped below if every seed has stopped
      # (it then changed nothing: stopped seeds are frozen).
      running = (chunk(new_state, step + n, data.train(step + n, every, total)) if step + n < total
                 else None)
      train_m, val, active, diverged_at = jax.device_get(
          (train_m, val, new_state[3]["active"], new_state[3]["diverged_at"]))
      for k in range(n):
        log.write(json.dumps({"step": step + k + 1, "split": "train",
                              **{m: np.asarray(v[k]).tolist() for m, v in train_m.items()}}) + "\n")
      step, state = step + n, new_state
      log.write(json.dumps({"step": step, "split": "val", **{m: np.asarray(v).tolist()
                                                             for m, v in val.items()}}) + "\n")
      for i in np.flatnonzero((diverged_at >= 0) & ~diverged):
        logging.warning("%s: %s diverged at step %d (non-finite loss or gradient): stopped",
                        workdir.name, tuning.member_name(i, lrs, seeds), diverged_at[i])
      diverged = diverged_at >= 0
      if time.monotonic() >= next_log or not np.any(active) or step >= total:  # ~1 line a second
        log.flush()
        logging.info("%s step %d: %s", workdir.name, step, tuning.progress(val, lrs))
        next_log = time.monotonic() + 1.0
      if next_ckpt is not None and step >= next_ckpt and step < total:
        log.flush()  # the lines up to a checkpoint are on disk before it (resuming re-logs after it)
        checkpoints.save(ckpt_dir, step, state)
        next_ckpt = step + config.train.checkpoint_every
      if not np.any(active):
        running = None
  checkpoints.save(ckpt_dir, step, state)  # kept as it is if this step was saved (a rerun, or a stop)
  return _finish(config, workdir, prog, task, data, state, val, step, time.time() - start_time)


def programs(config: ml_collections.ConfigDict, task: Any, cls: type,
             data: RunData) -> tuple[steps.Programs, jax.Array, jax.Array | None]:
  """The run's compiled programs and its members' init inputs: keys [R·S] and rates [R·S] (None
  without a rate grid); members are (rate, seed), rate-major."""
  es_metrics = config_lib.early_stopping_metrics(config)
  grid, lrs = bool(config.optim.learning_rates), tuning.rates(config.optim)
  for key, names in (("train.early_stopping.metrics", es_metrics),
                     ("train.reach_metric", (config.train.reach_metric,)),
                     ("optim.select_metric", (config.optim.select_metric,) if grid else ())):
    if missing := [m for m in names if m not in task.metrics]:
      raise ValueError(f"config: {key} {missing} are not metrics of task {task.name!r}: "
                       f"{', '.join(task.metrics)}")
  tx = steps.make_optimizer(config.optim, config.train.steps, grid=grid)
  prog = steps.build(cls, task.spec, config_lib.model_kwargs(config), task.family, tx,
                     es_metrics=es_metrics, patience=config.train.early_stopping.patience,
                     seed_axis=data.seed_axis, eval_seed_axis=data.eval_seed_axis,
                     static_train=data.static, metric_names=tuple(task.metrics), num_rates=len(lrs),
                     curve_metric=config.train.reach_metric, reach_value=config.train.reach_value)
  keys = jnp.stack([prng.key(s) for _ in lrs for s in data.seeds])  # jax.random.key's bits, faster
  return prog, keys, jnp.repeat(jnp.asarray(lrs, jnp.float32), len(data.seeds)) if grid else None


def _finish(config: ml_collections.ConfigDict, workdir: pathlib.Path, prog: steps.Programs, task: Any,
            data: RunData, state: Any, val: Any, step: int, wall_s: float) -> dict[str, Any]:
  """Evaluates the final (or best-val) state on test, chooses the rate (attnlab.tuning); writes
  attention.npz, then result.json."""
  params, rest, _, es = state
  early = config.train.early_stopping.patience > 0
  final_params, final_rest = (es["best_params"], es["best_rest"]) if early else (params, rest)
  _, test = prog.validate(final_params, final_rest, es, data.eval["test"], step)
  if early:
    val = es["best_metrics"]
  elif val is None:  # resumed from the final checkpoint: evaluate it again
    _, val = prog.validate(params, rest, es, data.eval["val"], step)
  val, test, es_host = jax.device_get((val, test, {k: es[k] for k in (
      "best_step", "stopped_at", "diverged_at", "reach_step", "curve_sum", "curve_n", "curve_last")}))
  evaluations = -(-config.train.steps // config.train.eval_every)
  fields, chosen = tuning.result(config, val, test, es_host, evaluations)
  result = {"task": config.task.name, "model": config.model.name, "seeds": list(config.train.seeds),
            **fields, "early_stopping": early, "devices": data.mesh.size, "wall_s": round(wall_s, 3)}
  first = chosen * len(result["seeds"])  # the chosen rate's first member
  if config.train.attention_maps:
    zeros = sparsity.zero_fractions(prog.graphdef, final_params, final_rest, data.eval["val"],
                                    start=first, count=len(result["seeds"]), shared=data.eval_shared,
                                    family=task.family)
    result["attention_sparsity"] = [float(z) if st == results.STATUS_OK and np.isfinite(z) else None
                                    for z, st in zip(zeros, result["status"])]
  if config.train.attention_maps:  # every process: the arrays are gathered (multi-host)
    _save_attention(prog, final_params, final_rest, task, data, workdir, first)
  if is_primary():
    results.atomic_write_json(workdir / "result.json", result)
  return result


def format_result(result: dict[str, Any]) -> str:
  """The lines ``attnlab train`` prints: mean ± std per split and metric, then diverged seeds."""
  lines = []
  for split, per in result["metrics"].items():
    lines.append(f"{split}: " + ", ".join(
        f"{m} {v['mean']:.4f} ± {v['std']:.4f}" if v["mean"] is not None else f"{m} – (every seed diverged)"
        for m, v in per.items()))
  for seed, status in zip(result["seeds"], result.get("status", ())):
    if status != results.STATUS_OK:
      lines.append(f"seed {seed}: {status} (left out of the means)")
  return "\n".join(lines + tuning.summary_lines(result))


def _host_copy(x: Any) -> Any:
  """This process's copy of a global array: its local replica, else gathered from all processes."""
  if not isinstance(x, jax.Array):
    return x
  if x.is_fully_replicated:
    return x.addressable_data(0)
  return multihost_utils.process_allgather(x, tiled=True)


def _save_attention(prog: steps.Programs, params: Any, rest: Any, task: Any, data: RunData,
                    workdir: pathlib.Path, member: int) -> None:
  """Attention weights of the first val example of the first seed of ``member``'s rate (that
  member) -> attention.npz (if the model sows them), written by process 0. Called by every process:
  with several, the arrays span all hosts and are first gathered (a collective)."""
  tree, val = (params, rest), data.eval["val"]
  if jax.process_count() > 1:
    tree, val = jax.tree.map(_host_copy, (tree, val))
  if not is_primary():
    return
  one = jax.jit(lambda t, i: jax.tree.map(lambda x: x[i], t))(tree, member)  # one compile
  batch = jax.tree.map(lambda v: np.asarray(v)[0], val)
  if not data.eval_shared:
    batch = jax.tree.map(lambda v: v[0], batch)
  maps = models.attention_maps(nnx.merge(prog.graphdef, *one, copy=True), batch)
  if maps:
    results.atomic_write(workdir / "attention.npz", lambda f: np.savez_compressed(f, **maps))
    if "image_size" in task.spec:  # the picture under the maps (attnlab.overlays)
      example = {k: np.asarray(v)[0] for k, v in batch.items()}
      results.atomic_write(workdir / "example.npz", lambda f: np.savez_compressed(f, **example))
