"""Side-by-side PRNG timing: ``jax.random.key`` (jaxlib's Threefry lowering) vs ``attnlab._prng.key``.

    python benchmarks/prng.py --repeats 7 --out benchmarks/prng.json

Both keys give bit-identical draws (tests/test_prng.py); only the time differs. Each row: one
jitted draw of the given shape, median of ``--repeats`` timed runs after a warm-up, the two key
types timed round-robin in one run. "attention dropout": one call of the MultiHeadAttention layer
with attention-weight dropout (B=4, N=512, 8 heads, d=64, broadcast_dropout=False), its dropout
stream seeded by each key type.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import jax
from flax import nnx

from attnlab import _prng as prng
from attnlab import modules
from _timing import time_interleaved  # benchmarks/ is on sys.path when run as a script

SHAPES = {"GAT dropout masks, 10 seeds (5.3M)": (5_300_000,),
          "attention weights [4, 8, 1024, 1024]": (4, 8, 1024, 1024)}
DRAWS = {"bernoulli(0.4)": lambda k, s: jax.random.bernoulli(k, 0.4, s),
         "normal": lambda k, s: jax.random.normal(k, s)}


def _median_times(jobs, repeats):
  return dict(zip(jobs, time_interleaved(list(jobs.values()), repeats)))


def _mha_job(make_key):
  layer = modules.MultiHeadAttention(8, 512, dropout_rate=0.1, broadcast_dropout=False,
                                     rngs=nnx.Rngs(0, dropout=make_key(1)))
  x = jax.random.normal(jax.random.key(0), (4, 512, 512))
  graphdef, state = nnx.split(layer)
  run = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x, deterministic=False))
  return lambda: run(state, x)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--out", default="benchmarks/prng.json")
  args = ap.parse_args(argv)
  keys = {"jax.random.key": jax.random.key, "attnlab prng.key": prng.key}
  rows = []
  for shape_name, shape in SHAPES.items():
    for draw_name, draw in DRAWS.items():
      jobs = {kn: (lambda f=jax.jit(lambda k: draw(k, shape)), k=mk(0): f(k)) for kn, mk in keys.items()}
      t = _median_times(jobs, args.repeats)
      rows.append({"what": f"{draw_name} {shape_name}", **t})
  rows.append({"what": "attention dropout: MultiHeadAttention call, B=4 N=512",
               **_median_times({kn: _mha_job(mk) for kn, mk in keys.items()}, args.repeats)})
  print(f"{'draw':<58} {'jax.random.key':>15} {'attnlab prng.key':>17} {'speed-up':>9}")
  for r in rows:
    a, b = r["jax.random.key"], r["attnlab prng.key"]
    print(f"{r['what']:<58} {a * 1e3:>12.1f} ms {b * 1e3:>14.1f} ms {a / b:>8.1f}x")
  result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "loadavg": os.getloadavg(),
            "jax": jax.__version__, "device": str(jax.devices()[0]), "repeats": args.repeats,
            "rows": rows}
  tmp = args.out + ".tmp"
  with open(tmp, "w") as fh:
    json.dump(result, fh, indent=1)
  os.replace(tmp, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
