"""Longest context whose attention forward+backward fits a fixed per-device memory: ring on P
virtual CPU devices vs dense and blocked on one device (compiled memory stats, nothing is run).

    python benchmarks/ring_context.py --devices 4 --budget-mib 256 --out benchmarks/ring_context.json

For L = 1024, 2048, ... the gradient of sum(attention(q, k, v, causal=True)²) wrt q, k, v
(B=1, H=8, D=64, fp32, scaled_dot/softmax) is compiled and its per-device memory read from
``memory_analysis()``: arguments + outputs + temporaries (the ring's q, k, v sharded over the
``seq`` axis, L/P per device). A method's row ends at the first L over the budget. This is one
attention layer, not a whole model: a ring-trained lm (``model.attention.impl=ring``) still keeps
its other activations, O(L), on every device.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--devices", type=int, default=4)
ap.add_argument("--budget-mib", type=float, default=256.0)
ap.add_argument("--max-log2", type=int, default=20, help="longest L tried: 2**max_log2")
ap.add_argument("--out", default="benchmarks/ring_context.json")
ARGS = ap.parse_args()
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={ARGS.devices}"]))

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attnlab import kernels, results  # noqa: E402
from attnlab.kernels import ring  # noqa: E402

H, D = 8, 64


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      flags = next(line for line in f if line.startswith("flags")).split()
  except (OSError, StopIteration):
    return "unknown"
  return ",".join(x for x in ("avx512f", "avx2", "fma") if x in flags) or "none of avx512f/avx2/fma"


def per_device_bytes(impl: str, n: int) -> int:
  x = jax.ShapeDtypeStruct((1, n, H, D), jnp.float32)
  loss = lambda q, k, v: jnp.sum(kernels.attention(q, k, v, causal=True, impl=impl) ** 2)
  grad = jax.grad(loss, argnums=(0, 1, 2))
  if impl == "ring":
    mesh = ring.make_mesh()
    sh = NamedSharding(mesh, P(None, ring.SEQ_AXIS))
    with jax.set_mesh(mesh):
      compiled = jax.jit(grad, in_shardings=(sh, sh, sh), out_shardings=(sh, sh, sh)).lower(x, x, x).compile()
  else:
    compiled = jax.jit(grad).lower(x, x, x).compile()
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def main():
  budget = int(ARGS.budget_mib * 2**20)
  started = datetime.datetime.now().isoformat(timespec="seconds")
  rows, longest = [], {}
  for impl in ("dense", "blocked", "ring"):
    for log2 in range(10, ARGS.max_log2 + 1):
      n = 2 ** log2
      b = per_device_bytes(impl, n)
      rows.append({"method": impl, "devices": ARGS.devices if impl == "ring" else 1, "L": n, "bytes": b})
      if b > budget:
        break
      longest[impl] = n
  print(f"per-device memory of attention fwd+bwd (B=1, H={H}, D={D}, fp32, causal), budget "
        f"{ARGS.budget_mib:g} MiB; CPU: {_cpu_flags()}; jax {jax.__version__}; {os.getloadavg()[0]:.1f} load")
  print(f"{'method':<10} {'devices':>7} {'L':>9} {'MiB/device':>11}")
  for r in rows:
    over = " (over)" if r["bytes"] > budget else ""
    print(f"{r['method']:<10} {r['devices']:>7} {r['L']:>9} {r['bytes'] / 2**20:>11.1f}{over}")
  print("longest L within the budget: " + ", ".join(f"{k} {v}" for k, v in longest.items()))
  out = {"started": started, "devices": ARGS.devices, "budget_mib": ARGS.budget_mib, "cpu": _cpu_flags(),
         "jax": jax.__version__, "command": "python " + " ".join(sys.argv), "rows": rows, "longest": longest}
  results.atomic_write_json(ARGS.out, out)


if __name__ == "__main__":
  main()
