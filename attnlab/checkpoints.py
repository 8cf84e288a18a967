"""Orbax checkpoints of a run's pytree state (all seeds stacked), restored into a template.

The tree is saved as its flat list of leaves (PRNG key leaves as their raw key data), so any pytree
of arrays (nnx.State, optax states, dicts) round-trips without orbax knowing its node types; the
template (same structure, e.g. the freshly initialised state) gives the structure back.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


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
  options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                         create=True)
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
  """Saves ``tree`` as checkpoint ``step`` (keeps only the newest)."""
  with _quiet(), _manager(directory) as manager:
    manager.save(step, args=ocp.args.StandardSave(_flatten(tree)), force=True)
    manager.wait_until_finished()


def latest_step(directory: pathlib.Path) -> int | None:
  if not directory.exists():
    return None
  with _quiet(), _manager(directory) as manager:
    return manager.latest_step()


def restore(directory: pathlib.Path, template: Any) -> tuple[int, Any] | None:
  """The newest checkpoint restored into ``template``'s structure, or None if there is none."""
  step = latest_step(directory)
  if step is None:
    return None
  with _quiet(), _manager(directory) as manager:
    flat = manager.restore(step, args=ocp.args.StandardRestore(_flatten(template)))
  leaves, treedef = jax.tree.flatten(template)
  if len(flat) != len(leaves):
    raise ValueError(f"checkpoint in {directory} has {len(flat)} arrays, the run has {len(leaves)}: "
                     "it belongs to a different model; use a new workdir")
  out = []
  for i, leaf in enumerate(leaves):
    value = np.asarray(flat[f"{i:05d}"])
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
    elif value.shape != leaf.shape:
      raise ValueError(f"checkpoint in {directory}: array {i} has shape {value.shape}, the run "
                       f"expects {leaf.shape}; use a new workdir")
    out.append(value)
  return step, jax.tree.unflatten(treedef, out)
