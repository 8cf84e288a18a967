"""Orbax checkpoints of a run's pytree state (all seeds stacked), restored into a template.

The tree is saved as its flat list of leaves (PRNG key leaves as their raw key data), so any pytree
of arrays (nnx.State, optax states, dicts) round-trips without orbax knowing its node types; the
template (same structure, e.g. the freshly initialised state) gives the structure back.

The two newest checkpoints are kept. Saving a step that exists keeps it (a rerun of a finished
loop reuses its final checkpoint; orbax never overwrites a step). A newest checkpoint that cannot be
read is set aside, renamed to ``checkpoints.corrupt-STEP`` beside the directory, and the previous
one is restored instead (or none), with a warning naming what was set aside.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import pathlib
import shutil
import sys
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from attnlab import results


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Orbax logs every save at INFO; keep the run log readable (warnings still shown)."""
  level = logging.get_verbosity()
  logging.set_verbosity(min(level, logging.WARNING))  # absl: larger = more verbose
  try:
    yield
  finally:
    logging.set_verbosity(level)


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  _drop_orbax_noise()  # before orbax runs: a failed read's late callbacks can come at once
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                         create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory.resolve(), options=options)


def _flatten(tree: Any) -> dict[str, np.ndarray]:
  leaves = jax.tree.leaves(tree)
  out = {}
  for i, leaf in enumerate(leaves):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[f"{i:05d}"] = np.asarray(jax.device_get(leaf))
  return out


def save(directory: pathlib.Path, step: int, tree: Any) -> None:
  """Saves ``tree`` as checkpoint ``step``, unless that step is saved already (then it is kept)."""
  with _quiet(), results.writing(directory / str(step)):
    try:
      with _manager(directory) as manager:
        if step in manager.all_steps():
          return
        manager.save(step, args=ocp.args.StandardSave(_flatten(tree)), force=True)
        manager.wait_until_finished()
    except BaseException:
      for tmp in directory.glob("*.orbax-checkpoint-tmp*"):  # nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
      raise


def steps(directory: pathlib.Path) -> list[int]:
  """The saved steps, oldest first."""
  if not directory.exists():
    return []
  with _quiet(), _manager(directory) as manager:
    return sorted(manager.all_steps())


def latest_step(directory: pathlib.Path) -> int | None:
  saved = steps(directory)
  return saved[-1] if saved else None


def restore(directory: pathlib.Path, template: Any) -> tuple[int, Any] | None:
  """The newest readable checkpoint restored into ``template``'s structure, or None if none is.

  A checkpoint that orbax cannot read is set aside (module docstring); one of another structure
  (a different model) is a ValueError.
  """
  for step in reversed(steps(directory)):
    try:
      with _quiet(), _manager(directory) as manager:
        flat = manager.restore(step, args=ocp.args.StandardRestore(_flatten(template)))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      aside = _set_aside(directory, step)
      logging.warning("checkpoint %d of %s is unreadable: set aside as %s, resuming from %s (%s: %s)",
                      step, directory, aside, "the previous checkpoint" if steps(directory) else "scratch",
                      type(e).__name__, (str(e).splitlines() or [""])[0][:160])
      continue
    return step, _unflatten(directory, flat, template)
  return None


def _unflatten(directory: pathlib.Path, flat: dict[str, Any], template: Any) -> Any:
  leaves, treedef = jax.tree.flatten(template)
  if len(flat) != len(leaves):
    raise ValueError(f"checkpoint in {directory} has {len(flat)} arrays, the run has {len(leaves)}: "
                     "it belongs to a different model or attnlab version; use a new workdir")
  out = []
  for i, leaf in enumerate(leaves):
    value = np.asarray(flat[f"{i:05d}"])
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
    elif value.shape != leaf.shape:
      raise ValueError(f"checkpoint in {directory}: array {i} has shape {value.shape}, the run "
                       f"expects {leaf.shape}; use a new workdir")
    out.append(value)
  return jax.tree.unflatten(treedef, out)


def _set_aside(directory: pathlib.Path, step: int) -> pathlib.Path:
  """Moves checkpoint ``step`` out of ``directory`` (orbax no longer sees it); returns where to."""
  target = directory.with_name(f"{directory.name}.corrupt-{step}")
  n = 1
  while target.exists():
    n += 1
    target = directory.with_name(f"{directory.name}.corrupt-{step}-{n}")
  (directory / str(step)).rename(target)
  return target


def _drop_orbax_noise() -> None:
  """After a failed orbax read or write, tensorstore's pending reads end on orbax's closed event
  loop: "Event loop is closed" tracebacks and "Task exception was never retrieved" log records,
  possibly before the error itself reaches Python. Installed before orbax is first used, this drops
  those two (everything else still prints)."""
  previous = sys.unraisablehook
  if getattr(previous, "attnlab_drops_closed_loops", False):
    return

  def hook(unraisable: Any) -> None:
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      previous(unraisable)

  hook.attnlab_drops_closed_loops = True
  sys.unraisablehook = hook
  std_logging.getLogger("asyncio").addFilter(
      lambda record: not str(record.msg).startswith("Task exception was never retrieved"))
