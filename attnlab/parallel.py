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
SEQ_AXIS = "seq"  # attnlab.kernels.ring.SEQ_AXIS


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 100) -> None:
  """``jax.distributed.initialize`` for a multi-host run, with CPU collectives over gloo.

  Unset arguments come from the cluster (SLURM, Open MPI, TPU, ...: jax's auto-detection) or
  ``JAX_COORDINATOR_ADDRESS``. ``timeout_s``: a process that sends no heartbeat for this long is
  taken as dead and the others stop with an error (instead of waiting in a collective forever).
  """
  if not isinstance(timeout_s, int) or isinstance(timeout_s, bool) or timeout_s < 1:
    raise ValueError(f"parallel.initialize: timeout_s must be a positive int (seconds), got {timeout_s!r}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices of several processes
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             heartbeat_timeout_seconds=timeout_s,
                             shutdown_timeout_seconds=max(timeout_s, 10))


def make_mesh(devices: list[Any] | None = None, sequence: bool = False) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all hosts); with ``sequence`` a [1, n]
  mesh (``AXIS``, ``SEQ_AXIS``) whose devices split the sequence (ring attention), not the batch."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  if sequence:
    return Mesh(devices.reshape(1, devices.size), (AXIS, SEQ_AXIS))
  return Mesh(devices, (AXIS,))


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
