"""One training run: ``train_and_evaluate(config, workdir)``, all seeds in one vmapped program.

Writes to ``workdir``:

* ``config.json``   the run's config (a restart with a different config is refused);
* ``metrics.jsonl`` one line per train step and per evaluation: ``{"step", "split", metric: [per seed]}``;
* ``checkpoints/``  orbax checkpoints every ``train.checkpoint_every`` steps and at the end; a
  restarted run resumes from the newest (metrics.jsonl is cut back to it);
* ``result.json``   per split (val, test) and metric: ``per_seed``, ``mean``, ``std`` (ddof=1);
  with early stopping the val/test values are those of each seed's best-val state;
* ``attention.npz`` attention weights of one val example, seed 0 (``train.attention_maps``).

The batch is sharded over all devices (attnlab.parallel); the persistent JAX compilation cache is
on unless ``ATTNLAB_CACHE_DIR=off`` (default ``~/.cache/attnlab/jax``).
"""

from __future__ import annotations

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

from attnlab import checkpoints, models, parallel, prng, registry, steps
from attnlab import config as config_lib
from attnlab.results import atomic_write_json, read_json, summarize


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
  knobs = config.task.knobs.to_dict()
  config_lib.check_kwargs(f"task {config.task.name!r}", factory, knobs, "task.knobs")
  return factory(**knobs)


def model_class(config: ml_collections.ConfigDict, task: Any) -> type:
  cls = registry.get("model", config.model.name)
  family = getattr(cls, "family", None)
  if family != task.family:
    fitting = [n for n in registry.names("model") if getattr(registry.get("model", n), "family", None)
               == task.family]
    raise ValueError(f"config: model {config.model.name!r} (family {family!r}) cannot learn task "
                     f"{task.name!r} (family {task.family!r}); models of that family: {', '.join(fitting)}")
  config_lib.check_kwargs(f"model {config.model.name!r}", cls.__init__, config.model.options.to_dict(),
                          "model.options")
  return cls


def _stack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _same(batches: list[dict[str, np.ndarray]]) -> bool:
  return all(all(np.array_equal(b[k], batches[0][k]) for k in b) for b in batches[1:])


def _eval_plan(task: Any, split: str, cap: int) -> tuple[int, int]:
  """(number of batches, batch size): equal batches (one compiled program) covering the split."""
  if task.family == "node_classifier":
    return 1, cap
  n = task.eval_size
  if n is None:
    try:
      n = task.num_batches(split, 1)
    except NotImplementedError:
      return 1, cap
  size = max(d for d in range(1, min(n, cap) + 1) if n % d == 0)
  return n // size, size


class _Data:
  """Host batches per seed, stacked [.., S, B, ...], or shared by all seeds (seed axis None)."""

  def __init__(self, task: Any, config: ml_collections.ConfigDict, seeds: list[int], mesh: Any):
    self.task, self.seeds, self.mesh = task, seeds, mesh
    self.bs = config.train.batch_size
    self.static = task.family == "node_classifier"  # the whole graph is the (fixed) batch
    first = [task.batch("train", 0, self.bs, seed=s) for s in seeds]
    self.shared = self.static and _same(first)
    self.seed_axis = None if self.shared else 0
    per_split = {split: self._eval_batches(split, config.train.eval_batch_size) for split in ("val", "test")}
    self.eval_shared = all(_same(b) for batches in per_split.values() for b in batches)
    self.eval_seed_axis = None if self.eval_shared else 0
    self.eval = {split: self._put(_stack([b[0] if self.eval_shared else _stack(b) for b in batches]),
                                  lead=1, shared=self.eval_shared)
                 for split, batches in per_split.items()}
    self.static_batch = (self._put(first[0] if self.shared else _stack(first), lead=0, shared=self.shared)
                         if self.static else None)

  def _eval_batches(self, split: str, cap: int) -> list[list[dict[str, np.ndarray]]]:
    nb, size = _eval_plan(self.task, split, cap)
    return [[self.task.batch(split, i, size, seed=s) for s in self.seeds] for i in range(nb)]

  def _put(self, batch: dict[str, np.ndarray], lead: int, shared: bool) -> dict[str, jax.Array]:
    if self.static:
      return parallel.shard_batch(batch, self.mesh, None)  # every device needs the whole graph
    return parallel.shard_batch(batch, self.mesh, lead + (0 if shared else 1))

  def train(self, start: int, k: int, steps: int) -> dict[str, jax.Array] | None:
    if self.static:
      return self.static_batch
    chunk = [_stack([self.task.batch("train", min(t, steps - 1), self.bs, seed=s) for s in self.seeds])
             for t in range(start, start + k)]
    return self._put(_stack(chunk), lead=1, shared=False)


def _check_workdir_config(workdir: pathlib.Path, cfg: dict[str, Any]) -> None:
  path = workdir / "config.json"
  if path.exists():
    old = read_json(path)
    if old != cfg:
      diff = sorted(_diff(old, cfg))
      raise ValueError(f"workdir {str(workdir)!r} holds a run of a different config (differs in: "
                       f"{', '.join(diff[:10])}); use a new --workdir or delete it")
  elif is_primary():
    atomic_write_json(path, cfg)


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = set()
    for k in set(a) | set(b):
      out |= _diff(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else {f"{prefix}{k}"}
    return out
  return set() if a == b else {prefix.rstrip(".")}


def _trim_metrics(path: pathlib.Path, step: int) -> None:
  """Drops metric lines after ``step`` (a resumed run re-logs them)."""
  if path.exists():
    lines = [ln for ln in path.read_text().splitlines(keepends=True)
             if ln.endswith("\n") and json.loads(ln)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config.train.seeds`` together, evaluates val/test, writes ``workdir``; returns result."""
  config_lib.validate(config)
  enable_compilation_cache()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _check_workdir_config(workdir, config_lib.to_dict(config))
  if (workdir / "result.json").exists():
    logging.info("%s: already finished, result.json kept", workdir)
    return read_json(workdir / "result.json")
  start_time = time.time()
  task = make_task(config)
  cls = model_class(config, task)
  seeds = list(config.train.seeds)
  total, every = config.train.steps, config.train.eval_every
  mesh = parallel.make_mesh()
  data = _Data(task, config, seeds, mesh)
  es_metrics = config_lib.early_stopping_metrics(config)
  missing = [m for m in es_metrics if m not in task.metrics]
  if missing:
    raise ValueError(f"config: train.early_stopping.metrics {missing} are not metrics of task "
                     f"{task.name!r}: {', '.join(task.metrics)}")
  patience = config.train.early_stopping.patience
  tx = steps.make_optimizer(config.optim, total)
  prog = steps.build(cls, task.spec, config_lib.model_kwargs(config), task.family, tx,
                     es_metrics=es_metrics, patience=patience, seed_axis=data.seed_axis,
                     eval_seed_axis=data.eval_seed_axis, static_train=data.static,
                     metric_names=tuple(task.metrics))
  keys = jnp.stack([prng.key(s) for s in seeds])  # jax.random.key's bits, a faster hash
  params, rest, opt_state = prog.init(keys)
  es = prog.es_init(params, rest, total)
  state = parallel.replicate((params, rest, opt_state, es), mesh)
  step, ckpt_dir = 0, workdir / "checkpoints"
  restored = checkpoints.restore(ckpt_dir, state)
  if restored is not None:
    step, state = restored[0], parallel.replicate(restored[1], mesh)
    logging.info("%s: resumed from step %d", workdir, step)
  if is_primary():
    _trim_metrics(workdir / "metrics.jsonl", step)
  val = None
  next_ckpt = step + config.train.checkpoint_every if config.train.checkpoint_every else None

  all_live = jnp.ones((every,), bool)  # made once: host work per chunk slows the device (2 cores)

  def chunk(state, at, batches):
    """Dispatches the steps after ``at`` and their validation; nothing waits for the device."""
    params, rest, opt_state, es = state
    live = all_live if at + every <= total else jnp.arange(at, at + every) < total
    params, rest, opt_state, train_m = prog.train_chunk(params, rest, opt_state, es["active"], batches,
                                                        live)
    n = min(every, total - at)
    es, val = prog.validate(params, rest, es, data.eval["val"], at + n)
    return (params, rest, opt_state, es), train_m, val, n

  running, next_log = None, 0.0
  if step < total and bool(np.any(jax.device_get(state[3]["active"]))):
    running = chunk(state, step, data.train(step, every, total))
  with open(workdir / "metrics.jsonl" if is_primary() else os.devnull, "a") as log:
    while running is not None:
      new_state, train_m, val, n = running
      # The next chunk is dispatched before this one is read (its seeds' on-flags stay on the
      # device), so the device never waits for the host; dropped below if every seed has stopped
      # (it then changed nothing: stopped seeds are frozen).
      running = (chunk(new_state, step + n, data.train(step + n, every, total)) if step + n < total
                 else None)
      train_m, val, active = jax.device_get((train_m, val, new_state[3]["active"]))
      for k in range(n):
        log.write(json.dumps({"step": step + k + 1, "split": "train",
                              **{m: np.asarray(v[k]).tolist() for m, v in train_m.items()}}) + "\n")
      step, state = step + n, new_state
      log.write(json.dumps({"step": step, "split": "val", **{m: np.asarray(v).tolist()
                                                             for m, v in val.items()}}) + "\n")
      if time.monotonic() >= next_log or not np.any(active) or step >= total:  # ~1 line a second
        log.flush()
        logging.info("%s step %d: %s", workdir.name, step,
                     ", ".join(f"val {m} {np.mean(v):.4f}" for m, v in val.items()))
        next_log = time.monotonic() + 1.0
      if next_ckpt is not None and step >= next_ckpt and step < total:
        log.flush()  # the lines up to a checkpoint are on disk before it (resuming re-logs after it)
        checkpoints.save(ckpt_dir, step, state)
        next_ckpt = step + config.train.checkpoint_every
      if not np.any(active):
        running = None
  params, rest, opt_state, es = state
  checkpoints.save(ckpt_dir, step, (params, rest, opt_state, es))
  early = patience > 0
  final_params, final_rest = (es["best_params"], es["best_rest"]) if early else (params, rest)
  _, test = prog.validate(final_params, final_rest, es, data.eval["test"], step)
  if early:
    val = es["best_metrics"]
  elif val is None:  # resumed from the final checkpoint: evaluate it again
    _, val = prog.validate(params, rest, es, data.eval["val"], step)
  val, test, es_host = jax.device_get((val, test, {k: es[k] for k in ("best_step", "stopped_at")}))
  result = {
      "task": config.task.name, "model": config.model.name, "seeds": seeds,
      "metrics": {"val": summarize(val), "test": summarize(test)},
      "best_step": np.asarray(es_host["best_step"]).tolist(),
      "stopped_at": np.asarray(es_host["stopped_at"]).tolist(),
      "early_stopping": early, "devices": mesh.size, "wall_s": round(time.time() - start_time, 3),
  }
  if is_primary():
    if config.train.attention_maps:
      _save_attention(prog, final_params, final_rest, task, data, workdir)
    atomic_write_json(workdir / "result.json", result)
  return result


def _save_attention(prog: steps.Programs, params: Any, rest: Any, task: Any, data: _Data,
                    workdir: pathlib.Path) -> None:
  """Attention weights of the first val example of seed 0 -> attention.npz (if the model sows them)."""
  one = jax.jit(lambda t: jax.tree.map(lambda x: x[0], t))((params, rest))  # one compile, not one per leaf
  batch = {k: np.asarray(v)[0] for k, v in data.eval["val"].items()}
  if not data.eval_shared:
    batch = {k: v[0] for k, v in batch.items()}
  maps = models.attention_maps(nnx.merge(prog.graphdef, *one, copy=True), batch)
  if maps:
    np.savez_compressed(workdir / "attention.npz", **maps)
