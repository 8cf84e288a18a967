"""Data parallelism over every JAX device: one Mesh axis ``data``, the batch axis sharded over it.

Parameters and optimiser states are replicated; each batch is split along its example axis across
the mesh (``NamedSharding(mesh, P(..., "data"))``). The jitted train step is written for one
device; XLA's SPMD partitioner inserts the gradient all-reduce. The same code therefore runs on one
CPU, 8 GPUs or a TPU slice, and on several hosts after ``jax.distributed.initialize()`` (every host
builds the same global batch from the deterministic task and contributes its addressable shards).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(devices: list[Any] | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every leaf of ``tree`` on all devices of ``mesh`` (parameters, optimiser state)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _put(x, sharding), tree)


def batch_sharding(mesh: Mesh, ndim: int, axis: int, size: int) -> NamedSharding:
  """Shards dimension ``axis`` over the mesh when it divides evenly, else replicates."""
  if size % mesh.size != 0 or mesh.size == 1:
    return replicated(mesh)
  spec = [None] * ndim
  spec[axis] = AXIS
  return NamedSharding(mesh, P(*spec))


def shard_batch(batch: dict[str, Any], mesh: Mesh, axis: int | None) -> dict[str, Any]:
  """Places a host batch (a dict of arrays or pytrees of arrays) on the mesh, its example dimension
  ``axis`` split across devices.

  ``axis=None`` replicates (e.g. a whole graph whose nodes are all needed by every device).
  """
  def put(value):
    value = np.asarray(value)
    if axis is None or value.ndim <= axis:
      return _put(value, replicated(mesh))
    return _put(value, batch_sharding(mesh, value.ndim, axis, value.shape[axis]))

  return jax.tree.map(put, batch)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
  if jax.process_count() > 1 and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _put(np.asarray(jax.random.key_data(x)), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)  # multi-host: every host holds the global array and gives its own shards
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
