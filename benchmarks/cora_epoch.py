"""Cost of one GAT-on-Cora epoch (the runner's compiled train step + validation), 1 vs S seeds.

    python benchmarks/cora_epoch.py --seeds 1,10 --repeats 10

Builds exactly the programs ``attnlab train --config=configs/cora_gat.py`` runs (steps.build on the
config's task, model and optimiser; seeds vmapped) and times ``train_chunk`` (one optimiser step)
and ``validate`` (deterministic val forward + early-stopping update), median of ``--repeats``
after a warm-up, with host memory kept for reuse as ``attnlab train`` keeps it (attnlab._hostmem;
``ATTNLAB_HOST_MALLOC=off`` times glibc's default instead). ``--profile DIR`` also writes a JAX
profiler trace of the train step for the largest seed count and prints the XLA ops that took the
most time. ``--xla_option KEY=VALUE`` (repeatable) also compiles both programs with those XLA
compile options and times them in the same process, interleaved with the default build (an A/B
that the machine's load cannot skew), e.g. ``--xla_option xla_cpu_experimental_ynn_fusion_type=``
(no YNNPACK fusions; docs/performance.md). ``--task_kwarg KEY=VALUE`` (repeatable) does
the same for the config's task kwargs, e.g. ``--task_kwarg subgraph_hops=0`` (the whole graph
against the 2-hop computation subgraphs configs/cora_gat.py uses); with both, the second build
has both.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json

import jax
import jax.numpy as jnp

from attnlab import config as config_lib
from attnlab import _hostmem as hostmem
from attnlab import _prng as prng
from attnlab import parallel, steps, train
from attnlab.rundata import RunData
from _timing import time_interleaved  # benchmarks/ is on sys.path when run as a script


def programs(data_dir: str, seeds: int, options: dict | None = None, kwargs: dict | None = None):
  c = config_lib.load_file("configs/cora_gat.py")
  c.unlock()
  c.data_dir, c.train.seeds = data_dir, tuple(range(seeds))
  for key, value in (kwargs or {}).items():
    if key not in c.task.kwargs:
      raise SystemExit(f"--task_kwarg: unknown kwarg {key!r}; the config's task kwargs: "
                       f"{', '.join(c.task.kwargs)}")
    c.task.kwargs[key] = value
  task = train.make_task(c)
  data = RunData(task, c, list(c.train.seeds), parallel.make_mesh())
  prog = steps.build(train.model_class(c, task), task.spec, config_lib.model_kwargs(c), task.family,
                     steps.make_optimizer(c.optim, c.train.steps),
                     es_metrics=config_lib.early_stopping_metrics(c),
                     patience=c.train.early_stopping.patience, seed_axis=data.seed_axis,
                     eval_seed_axis=data.eval_seed_axis, static_train=data.static,
                     metric_names=tuple(task.metrics))
  params, rest, opt = prog.init(jnp.stack([prng.key(s) for s in c.train.seeds]))
  es = prog.es_init(params, rest, c.train.steps)
  live = jnp.ones((1,), bool)
  state = {"p": (params, rest, opt)}

  train_chunk, validate = prog.train_chunk, prog.validate
  if options:  # the same programs, compiled with these XLA options
    train_chunk = train_chunk.lower(params, rest, opt, es, data.static_batch, live, 0).compile(options)
    validate = validate.lower(params, rest, es, data.eval["val"], 1).compile(options)

  def step():
    *new, _, _ = train_chunk(*state["p"], es, data.static_batch, live, 0)
    state["p"] = tuple(new)
    return new[0]

  jax.block_until_ready(step())  # the step's outputs (its next inputs) may be placed differently
  return step, lambda: validate(*state["p"][:2], es, data.eval["val"], 1)


def _option(text: str) -> tuple[str, object]:
  key, sep, value = text.partition("=")
  if not sep or not key:
    raise argparse.ArgumentTypeError(f"wants KEY=VALUE (VALUE may be empty), got {text!r}")
  lowered = value.lower()
  if lowered in ("true", "false"):
    return key, lowered == "true"
  return key, int(value) if value.lstrip("-").isdigit() else value


def _profile(fn, where: str, top: int = 15):
  jax.profiler.start_trace(where, create_perfetto_trace=True)
  for _ in range(3):
    jax.block_until_ready(fn())
  jax.profiler.stop_trace()
  trace = sorted(glob.glob(f"{where}/**/perfetto_trace.json.gz", recursive=True))[-1]
  events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e and not e["name"].startswith("$"):
      total[e["name"]] += e["dur"]
      count[e["name"]] += 1
  print("top XLA ops of one train step (ms per step; async dots count their launch only):")
  for name, us in total.most_common(top):
    print(f"  {us / 3e3:8.2f} ms  {count[name] // 3:4d}x  {name[:90]}")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data_dir", default=None, help="directory of the Planetoid ind.cora.* files "
                  "(default: attnlab.data.paths, i.e. the copy shipped with attnlab)")
  ap.add_argument("--seeds", default="1,10")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--profile", default="", help="write a profiler trace here and print top ops")
  ap.add_argument("--xla_option", type=_option, action="append", default=[],
                  help="KEY=VALUE XLA compile option; also time a build with these options (A/B)")
  ap.add_argument("--task_kwarg", type=_option, action="append", default=[],
                  help="KEY=VALUE task kwarg; also time a build with these kwargs (A/B)")
  args = ap.parse_args(argv)
  options, kwargs = dict(args.xla_option), dict(args.task_kwarg)
  counts = [int(s) for s in args.seeds.split(",")]
  kept = hostmem.keep_freed_host_memory()  # before the first program runs, as the CLI does
  print(f"host memory kept for reuse (attnlab._hostmem): {'yes' if kept else 'no'}")
  print(f"{'seeds':>5} {'train step':>12} {'validate':>10} {'epoch':>9} {'per seed':>9}")
  for s in counts:
    step, validate = programs(args.data_dir, s)
    variant = options or kwargs
    jobs = [step, validate] + (list(programs(args.data_dir, s, options, kwargs)) if variant else [])
    t, v, *ab = (1e3 * x for x in time_interleaved(jobs, args.repeats))
    print(f"{s:>5} {t:>9.1f} ms {v:>7.1f} ms {t + v:>6.1f} ms {(t + v) / s:>6.1f} ms")
    if variant:
      to, vo = ab
      print(f"{s:>5} {to:>9.1f} ms {vo:>7.1f} ms {to + vo:>6.1f} ms {(to + vo) / s:>6.1f} ms"
            f"  with {options or ''}{kwargs or ''}: train {to / t:.2f}x, validate {vo / v:.2f}x, "
            f"epoch {(to + vo) / (t + v):.2f}x")
    if args.profile and s == max(counts):
      _profile(step, args.profile)


if __name__ == "__main__":
  main()
