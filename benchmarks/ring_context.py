"""Longest context whose forward+backward fits a fixed per-device memory: ring on P virtual CPU
devices vs dense and blocked on one device (compiled memory stats, nothing is run).

    python benchmarks/ring_context.py --devices 4 --budget-mib 256 --out benchmarks/ring_context.json

Two tables (``--what``), for L = 1024, 2048, ...; a method's rows end at the first L over the budget.
Per-device memory is ``memory_analysis()``'s arguments + outputs + temporaries, minus aliased bytes.

* ``attention``: the gradient of sum(attention(q, k, v, causal=True)²) wrt q, k, v (B=1, H=8, D=64,
  fp32, scaled_dot/softmax); the ring's q, k, v sharded over the ``seq`` axis, L/P per device.
* ``lm``: the lm model's loss and gradient wrt every parameter (configs/shakespeare.py's task and
  vocabulary, d_model 128, 4 layers, 4 heads, batch 1, fp32), as ``attnlab train`` lays it out:
  ring under ``parallel.sequence=P`` (a [1, P] mesh, the tokens split over ``seq`` by
  ``parallel.batch_sharding``, parameters replicated) vs blocked on one device. ``ring, tokens
  replicated`` is the same program with the tokens on every device. Ring rows also count the
  collectives in the compiled program (``all-gather`` would mean XLA gathered a sequence).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--devices", type=int, default=4)
ap.add_argument("--budget-mib", type=float, default=256.0)
ap.add_argument("--max-log2", type=int, default=20, help="longest L tried: 2**max_log2")
ap.add_argument("--what", choices=("attention", "lm", "both"), default="both")
ap.add_argument("--out", default="benchmarks/ring_context.json")
ARGS = ap.parse_args()
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={ARGS.devices}"]))

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attnlab import kernels, losses, parallel, registry, results  # noqa: E402
from attnlab.attention_spec import AttentionSpec  # noqa: E402
from attnlab.kernels import ring  # noqa: E402
import _isa  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

H, D = 8, 64
LM = {"d_model": 128, "num_layers": 4}
LM_HEADS = 4
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


def _cpu_flags() -> str:
  return ",".join(_isa.vector_extensions()) or "unknown"


def _bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _collectives(compiled) -> dict[str, int]:
  text = compiled.as_text()
  return {c: len(re.findall(rf"\b{c}(?:-start)?\(", text)) for c in COLLECTIVES}


def attention_step(method: str, n: int) -> tuple[int, dict[str, int] | None]:
  x = jax.ShapeDtypeStruct((1, n, H, D), jnp.float32)
  loss = lambda q, k, v: jnp.sum(kernels.attention(q, k, v, causal=True, impl=method) ** 2)
  grad = jax.grad(loss, argnums=(0, 1, 2))
  if method == "ring":
    mesh = ring.make_mesh()
    sh = NamedSharding(mesh, P(None, ring.SEQ_AXIS))
    with jax.set_mesh(mesh):
      compiled = jax.jit(grad, in_shardings=(sh, sh, sh), out_shardings=(sh, sh, sh)).lower(x, x, x).compile()
    return _bytes(compiled), _collectives(compiled)
  return _bytes(jax.jit(grad).lower(x, x, x).compile()), None


def lm_step(method: str, n: int) -> tuple[int, dict[str, int] | None]:
  """The lm's loss and parameter gradient at context ``n``; ``method``: blocked, ring or
  ring_replicated (the tokens on every device)."""
  spec = {**registry.get("task", "shakespeare")(seq_len=8, eval_size=8).spec, "seq_len": n}
  attention = AttentionSpec(num_heads=LM_HEADS, impl="blocked" if method == "blocked" else "ring")
  cls = registry.get("model", "lm")
  model = nnx.eval_shape(lambda: cls(spec=spec, rngs=nnx.Rngs(0), attention=attention, **LM))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest, batch):
    return losses.loss_and_metrics(nnx.merge(graphdef, params, rest, copy=True), batch, family="lm",
                                   train=True)[0]

  grad = jax.grad(loss)
  tokens = jax.ShapeDtypeStruct((1, n), jnp.int32)
  batch = {"inputs": tokens, "labels": tokens}
  if method == "blocked":
    return _bytes(jax.jit(grad).lower(params, rest, batch).compile()), None
  mesh = parallel.make_mesh(sequence=ARGS.devices)
  rep = parallel.replicated(mesh)
  tok = rep if method == "ring_replicated" else parallel.batch_sharding(mesh, (1, n), 0)
  with jax.set_mesh(mesh):
    compiled = jax.jit(grad, in_shardings=(rep, rep, {"inputs": tok, "labels": tok})).lower(
        params, rest, batch).compile()
  return _bytes(compiled), _collectives(compiled)


TABLES = {
    "attention": (attention_step, ("dense", "blocked", "ring"),
                  f"attention fwd+bwd (B=1, H={H}, D={D}, fp32, causal)"),
    "lm": (lm_step, ("blocked", "ring", "ring_replicated"),
           f"lm loss+gradient (d_model {LM['d_model']}, {LM['num_layers']} layers, {LM_HEADS} heads, "
           "batch 1, fp32)"),
}


def table(name: str, budget: int) -> dict:
  step, methods, what = TABLES[name]
  rows, longest = [], {}
  for method in methods:
    for log2 in range(10, ARGS.max_log2 + 1):
      n = 2 ** log2
      b, coll = step(method, n)
      rows.append({"method": method, "devices": 1 if method in ("dense", "blocked") else ARGS.devices,
                   "L": n, "bytes": b, **({"collectives": coll} if coll else {})})
      print(f"  {name} {method} L={n}: {b / 2**20:.1f} MiB", file=sys.stderr, flush=True)
      if b > budget:
        break
      longest[method] = n
  print(f"per-device memory of {what}, budget {ARGS.budget_mib:g} MiB; CPU: {_cpu_flags()}; "
        f"jax {jax.__version__}; {os.getloadavg()[0]:.1f} load")
  print(f"{'method':<16} {'devices':>7} {'L':>9} {'MiB/device':>11}")
  for r in rows:
    over = " (over)" if r["bytes"] > budget else ""
    print(f"{r['method']:<16} {r['devices']:>7} {r['L']:>9} {r['bytes'] / 2**20:>11.1f}{over}")
  print("longest L within the budget: " + ", ".join(f"{k} {v}" for k, v in longest.items()))
  for method in methods:
    fits = [r for r in rows if r["method"] == method and "collectives" in r and r["bytes"] <= budget]
    if fits:
      print(f"collectives in the compiled {method} program at L={fits[-1]['L']}: "
            + ", ".join(f"{k} {v}" for k, v in fits[-1]["collectives"].items()))
  print()
  return {"what": what, "rows": rows, "longest": longest}


def main():
  budget = int(ARGS.budget_mib * 2**20)
  started = datetime.datetime.now().isoformat(timespec="seconds")
  names = ("attention", "lm") if ARGS.what == "both" else (ARGS.what,)
  tables = {name: table(name, budget) for name in names}
  out = {"started": started, "devices": ARGS.devices, "budget_mib": ARGS.budget_mib, "cpu": _cpu_flags(),
         "jax": jax.__version__, "command": "python " + " ".join(sys.argv), "tables": tables}
  results.atomic_write_json(ARGS.out, out)


if __name__ == "__main__":
  main()
