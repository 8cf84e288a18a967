"""Data and sequence parallelism over every JAX device: a [n/P, P] Mesh with axes ``data`` and ``seq``.

Parameters and optimiser states are replicated; each batch is split along its example axis over
``data`` and, when P > 1, along the dimension after it (the sequence of token batches) over ``seq``
(``NamedSharding(mesh, P(..., "data", "seq"))``), which ring attention (attnlab.kernels.ring) splits
further inside each layer. The jitted train step is written for one device; XLA's SPMD partitioner
inserts the gradient all-reduce. The same code therefore runs on one CPU, 8 GPUs or a TPU slice, and
on several hosts after ``jax.distributed.initialize()`` (every host builds the same global batch
from the deterministic task and contributes its addressable shards).
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


def sequence_size(requested: int, ring: bool, num_devices: int) -> int:
  """The devices P that split the sequence: ``requested`` (``config.parallel.sequence``), where 0
  means all ``num_devices`` with ring attention, else 1; a ValueError unless P divides the count."""
  if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
    raise ValueError(f"parallel.sequence must be an int >= 1, or 0 (all devices with "
                     f"model.attention.impl='ring', else 1), got {requested!r}")
  p = requested or (num_devices if ring else 1)
  if num_devices % p:
    raise ValueError(f"parallel.sequence={p} must divide the number of devices ({num_devices}): "
                     f"the mesh is [devices / P, P] (data, seq); valid: "
                     f"{', '.join(str(d) for d in range(1, num_devices + 1) if num_devices % d == 0)}")
  return p


def make_mesh(devices: list[Any] | None = None, sequence: int = 1) -> Mesh:
  """A [n/P, P] mesh (``AXIS``, ``SEQ_AXIS``) over ``devices`` (default: all devices of all hosts,
  n of them): P = ``sequence`` neighbouring devices split the sequence, the n/P groups the batch."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  p = sequence_size(sequence, False, devices.size)
  return Mesh(devices.reshape(devices.size // p, p), (AXIS, SEQ_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every leaf of ``tree`` on all devices of ``mesh`` (parameters, optimiser state)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _put(x, sharding), tree)


def batch_sharding(mesh: Mesh, shape: tuple[int, ...], axis: int) -> NamedSharding:
  """Dimension ``axis`` of an array of ``shape`` sharded over the mesh's ``data`` axis and the one
  after it over ``seq``, each when its size divides evenly (else that dimension is replicated)."""
  spec = [None] * len(shape)
  for dim, name in ((axis, AXIS), (axis + 1, SEQ_AXIS)):
    size = dict(mesh.shape).get(name, 1)
    if dim < len(shape) and size > 1 and shape[dim] % size == 0:
      spec[dim] = name
  return NamedSharding(mesh, P(*spec))


def shard_batch(batch: dict[str, Any], mesh: Mesh, axis: int | None) -> dict[str, Any]:
  """Places a host batch (a dict of arrays or pytrees of arrays) on the mesh, its example dimension
  ``axis`` split over ``data`` and the next one over ``seq`` (``batch_sharding``).

  ``axis=None`` replicates (e.g. a whole graph whose nodes are all needed by every device).
  """
  def put(value):
    value = np.asarray(value)
    if axis is None or value.ndim <= axis:
      return _put(value, replicated(mesh))
    return _put(value, batch_sharding(mesh, value.shape, axis))

  return jax.tree.map(put, batch)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
  if jax.process_count() > 1 and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _put(np.asarray(jax.random.key_data(x)), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)  # multi-host: every host holds the global array and gives its own shards
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
