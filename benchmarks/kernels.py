"""Side-by-side attention benchmark: attnlab (auto/dense/blocked) vs JAX, Flax, naive and torch.

    python benchmarks/kernels.py --sizes 256,1024,4096,16384 --repeats 5 --out bench.json
    python benchmarks/kernels.py --sizes 1024,4096 --causal both --max-isa avx2 ...   # AVX2 emulated

For each N: d=64, 8 heads, fp32, ``--batch`` (``--large-batch`` from N ≥ ``--large-from``), full and
(``--causal yes|both``) causal attention (torch ``is_causal=True``), forward
and forward+backward (grad of sum(out · q) wrt q, k, v), median of ``--repeats`` timed runs after
one warm-up; the timed runs of one N go round-robin over all methods (the machine may be shared: a
change of load then hits every method alike, and the ratios stay comparable). FLOPs: 4·B·H·N²·d
forward, 3.5× that forward+backward (FlashAttention convention). Memory ("mem MB"): for JAX, the
compiled program's arguments + outputs + temporaries (``memory_analysis``), i.e. the peak it
allocates; for torch, "-" (not measured in-process). The ``--targets`` check runs each target config
in a fresh subprocess and reports its peak RSS (the child's VmHWM on Linux, else ru_maxrss; includes
the Python/JAX runtime). Methods whose N×N (or N×N×A) tensors would exceed ``--max-dense-gb`` are
skipped and marked "skip". ``--max-isa avx2`` caps the instruction set before JAX and torch load
(``benchmarks/_isa.py``: torch wholly, JAX outside its dots); every table is printed with the CPU's
vector extensions and the cap in effect. Causal FLOPs are counted as for full attention.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys

import _isa  # benchmarks/ is on sys.path when run as a script

CAP = _isa.apply_cap(sys.argv[1:]) if __name__ == "__main__" else None  # before jax and torch load

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from attnlab import kernels  # noqa: E402
from _timing import time_interleaved  # noqa: E402

D, H = 64, 8
TORCH = "torch sdpa"


def _jax_mem(fn, args):
  try:
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2**20
  except Exception:  # noqa: BLE001 - memory analysis is optional per backend
    return float("nan")


def _tril(n, causal):
  return jnp.tril(jnp.ones((n, n), jnp.bool_))[None, None] if causal else None  # [1, 1, N, N]


def _naive(causal):  # einsum + softmax, [B, N, H, D]
  def f(q, k, v):
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = s if not causal else jnp.where(_tril(q.shape[1], True), s, -jnp.inf)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)
  return f


def _naive_additive(p, causal):
  def f(q, k, v):
    fq = jnp.einsum("bnhd,da->bhna", q, p["W_q"])
    fk = jnp.einsum("bnhd,da->bhna", k, p["W_k"]) + p["b"]
    s = jnp.tanh(fq[:, :, :, None, :] + fk[:, :, None, :, :]) @ p["v"]  # [B, H, N, N]
    s = s if not causal else jnp.where(_tril(q.shape[1], True), s, -jnp.inf)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)
  return f


def _jax_methods(n, additive_params, causal=False):
  import flax.linen as nn  # noqa: PLC0415
  att = lambda impl: (lambda q, k, v: kernels.attention(q, k, v, causal=causal, impl=impl))
  methods = {
      "attnlab auto": (att("auto"), 0),
      "attnlab dense": (att("dense"), 1),
      "attnlab blocked": (att("blocked"), 0),
      "jax.nn.dpa": (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal), 1),
      "flax dpa": (lambda q, k, v: nn.dot_product_attention(q, k, v, mask=_tril(q.shape[1], causal)), 1),
      "naive einsum": (_naive(causal), 1),
      "additive blocked": (lambda q, k, v: kernels.attention(
          q, k, v, score="additive", params=additive_params, causal=causal, impl="blocked"), 0),
      "additive naive": (_naive_additive(additive_params, causal), D),  # N×N×A tanh tensor
  }
  return methods


def _fwd_bwd(f):
  return jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) * q), argnums=(0, 1, 2))


def _torch_jobs(b, n, threads, causal=False):
  """torch SDPA forward (no grad) and forward+backward as zero-argument callables."""
  import torch  # noqa: PLC0415
  torch.set_num_threads(threads)
  g = torch.Generator().manual_seed(0)
  q, k, v = (torch.randn(b, H, n, D, generator=g) for _ in range(3))
  sdpa = torch.nn.functional.scaled_dot_product_attention
  qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))

  def fwd():
    with torch.no_grad():
      return sdpa(q, k, v, is_causal=causal)

  def fb():
    (sdpa(qg, kg, vg, is_causal=causal) * qg).sum().backward()

  return fwd, fb


def bench_size(n, b, repeats, max_dense_gb, skip_additive_from, skip=(), torch_threads=1,
               pause=0.0, causal=False):
  key = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (b, n, H, D), jnp.float32) for kk in key)  # [B, N, H, D]
  ap = kernels.init_params("additive", jax.random.key(1), D)
  rows, jobs, timed = [], [], []
  for name, (f, dense_width) in _jax_methods(n, ap, causal).items():
    if (name.startswith("additive") and n >= skip_additive_from) or name in skip:
      continue
    bb = 1 if name.startswith("additive") else b  # additive: batch 1 (its memory target)
    x = tuple(t[:bb] for t in (q, k, v))
    fl0 = 4 * bb * H * n * n * D
    dense_gb = dense_width * bb * H * n * n * 4 * 3 / 2**30  # scores/weights/grad copies
    for mode, fn, fl in (("fwd", f, fl0), ("fwd+bwd", _fwd_bwd(f), 3.5 * fl0)):
      row = {"N": n, "batch": bb, "causal": causal, "method": name, "mode": mode, "flops": fl}
      if dense_gb > max_dense_gb:
        row.update(skipped=f"needs ~{dense_gb:.0f} GB")
      else:
        jf = jax.jit(fn)
        row["mem_mb"] = _jax_mem(fn, x)
        jobs.append(lambda jf=jf, x=x: jf(*x))
        timed.append(row)
      rows.append(row)
  try:
    torch_jobs = () if TORCH in skip else _torch_jobs(b, n, torch_threads, causal)
  except ImportError:
    torch_jobs = ()
    print("torch not installed: skipping torch SDPA")
  flops = (4 * b * H * n * n * D, 3.5 * 4 * b * H * n * n * D)
  for mode, fn, fl in zip(("fwd", "fwd+bwd"), torch_jobs, flops):
    row = {"N": n, "batch": b, "causal": causal, "method": TORCH, "mode": mode, "flops": fl, "mem_mb": None}
    rows.append(row)
    jobs.append(fn)
    timed.append(row)
  for row, t in zip(timed, time_interleaved(jobs, repeats, pause)):
    row.update(seconds=t, gflops=row["flops"] / t / 1e9)
  for row in rows:
    print(_fmt(row), flush=True)
  return rows


def _fmt(r):
  head = f"{r['N']:>6} {r['batch']:>3} {'yes' if r['causal'] else 'no':<6} {r['method']:<17} {r['mode']:<8}"
  if "skipped" in r:
    return f"{head} {'skip (' + r['skipped'] + ')':>30}"
  mem = "-" if r.get("mem_mb") is None else f"{r['mem_mb']:.0f}"
  return f"{head} {r['seconds'] * 1e3:>10.1f} ms {r['gflops']:>7.1f} GF/s {mem:>8} MB"


def _table(rows):
  print(f"\n{_isa.describe(CAP)}")
  print("     N   B causal method            mode         time          GFLOP/s   mem (JAX compiled)")
  for r in rows:
    print(_fmt(r))
  print("\nRatios (same run): reference time / attnlab auto time (> 1: attnlab faster)")
  for n, causal in sorted({(r["N"], r["causal"]) for r in rows}):
    for mode in ("fwd", "fwd+bwd"):
      t = {r["method"]: r.get("seconds") for r in rows
           if (r["N"], r["causal"], r["mode"]) == (n, causal, mode)}
      ours = t.get("attnlab auto")
      parts = [f"{ref}: {t[ref] / ours:.2f}x" for ref in ("jax.nn.dpa", TORCH, "naive einsum")
               if ours and t.get(ref)]
      if t.get("additive blocked") and t.get("additive naive"):
        parts.append(f"additive naive/blocked: {t['additive naive'] / t['additive blocked']:.2f}x")
      print(f"  N={n:<6} {'causal' if causal else 'full':<6} {mode:<8} auto vs "
            + (", ".join(parts) or "(no reference timed)"))


_TARGET_CODE = """
import resource, sys, time, jax, jax.numpy as jnp
from attnlab import kernels
score, n = sys.argv[1], int(sys.argv[2])
ks = jax.random.split(jax.random.key(0), 3)
q, k, v = (jax.random.normal(kk, (1, n, 8, 64), jnp.float32) for kk in ks)
p = kernels.init_params(score, jax.random.key(1), 64)
f = lambda q, k, v: jnp.sum(kernels.attention(q, k, v, score=score, params=p) * q)
g = jax.jit(jax.grad(f, argnums=(0, 1, 2)))
t = time.perf_counter(); jax.block_until_ready(g(q, k, v)); t = time.perf_counter() - t
try:  # Linux keeps ru_maxrss across exec: it would report the parent's peak (the big N rows)
  with open("/proc/self/status") as fh:
    kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
except OSError:
  kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(t, kb / 2**20)
"""


def targets():
  out = []
  for score, n in (("scaled_dot", 32768), ("additive", 4096)):
    r = subprocess.run([sys.executable, "-c", _TARGET_CODE, score, str(n)], capture_output=True,
                       text=True, check=True)
    secs, gb = map(float, r.stdout.split()[-2:])
    out.append({"score": score, "N": n, "batch": 1, "heads": 8, "d": 64, "mode": "fwd+bwd (auto)",
                "seconds_incl_compile": secs, "peak_rss_gb": gb, "under_4gb": gb < 4})
    print(f"target {score} N={n} B=1 H=8 d=64 fwd+bwd: {secs:.1f} s (incl. compile), "
          f"peak RSS {gb:.2f} GB -> {'OK' if gb < 4 else 'OVER'} (< 4 GB)", flush=True)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sizes", default="256,1024,4096,16384")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--large-batch", type=int, default=1, help="batch from N >= --large-from")
  ap.add_argument("--large-from", type=int, default=16384)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--max-dense-gb", type=float, default=8.0)
  ap.add_argument("--additive-up-to", type=int, default=4096, help="additive rows for N <= this")
  ap.add_argument("--targets", action="store_true", help="also run the N=32768 / additive RSS targets")
  ap.add_argument("--skip", default="", help="comma-separated method names to leave out (as the table "
                  "prints them, torch sdpa included)")
  ap.add_argument("--torch-threads", type=int, default=os.cpu_count())
  ap.add_argument("--pause", type=float, default=0.3,
                  help="seconds of idle before each timed run (lets torch's OpenMP threads sleep)")
  ap.add_argument("--causal", choices=("no", "yes", "both"), default="both",
                  help="full attention rows, causal rows (torch is_causal=True), or both")
  ap.add_argument("--max-isa", choices=("none",) + tuple(_isa.CAPS), default="none",
                  help="cap the instruction set of XLA's codegen and torch (set before they load; "
                  "see benchmarks/_isa.py for what it does not reach)")
  ap.add_argument("--out", default="benchmarks/kernels.json")
  args = ap.parse_args(argv)
  rows = []
  start = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "loadavg_start": os.getloadavg(), "argv": sys.argv[1:], "torch_threads": args.torch_threads,
           "pause_s": args.pause, "cpu": _isa.cpu_model(), "vector_extensions": _isa.vector_extensions(),
           "max_isa": CAP or "none", "isa": _isa.describe(CAP)}
  print(f"{start['date']} load average {start['loadavg_start']}\n{start['isa']}", flush=True)
  skip = tuple(x for x in args.skip.split(",") if x)
  names = tuple(_jax_methods(256, None)) + (TORCH,)
  if set(skip) - set(names):
    ap.error(f"--skip: unknown method(s) {sorted(set(skip) - set(names))}; valid: {', '.join(names)}")
  causal_modes = {"no": (False,), "yes": (True,), "both": (False, True)}[args.causal]
  for n in map(int, args.sizes.split(",")) if args.sizes else ():
    b = args.large_batch if n >= args.large_from else args.batch
    for causal in causal_modes:
      rows += bench_size(n, b, args.repeats, args.max_dense_gb, args.additive_up_to + 1, skip,
                         args.torch_threads, args.pause, causal)
  _table(rows)
  print(f"load average at the end {os.getloadavg()}")
  result = {**start, "loadavg_end": os.getloadavg(),
            "device": str(jax.devices()[0]), "jax": jax.__version__, "repeats": args.repeats,
            "rows": rows, "targets": targets() if args.targets else None,
            "max_rss_gb_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
  with open(args.out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
