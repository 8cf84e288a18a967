"""Training speed of a small character-level GPT: attnlab's ``lm`` trained the way ``attnlab train``
trains it (the runner's compiled chunk: ``--chunk`` steps in one lax.scan) against the same model
written here in eager PyTorch, on the same tiny-Shakespeare batches (attnlab's bundled copy).

    python benchmarks/lm.py --out benchmarks/lm.json      # 2000 steps
    python benchmarks/lm.py --steps 200                     # a quick run

Recipe (both): d=128, 4 layers, 4 heads, context 64, batch 12; pre-LayerNorm blocks, GELU (tanh)
MLP of 4·d, learned positions, untied output layer, dropout 0; AdamW (β2 0.99, weight decay 0.1 on
every parameter, as optax.adamw and torch.optim.AdamW do by default), global-norm clip 1.0, lr 1e-3
after 100 linear warm-up steps, cosine decay to 0. The torch model starts from attnlab's initial
parameters (copied), so the two runs differ only in the framework. torch runs eager on
``--torch-threads`` threads.

Timing: chunks of ``--chunk`` steps, attnlab and torch alternating (a change of machine load hits
both), each after ``--pause`` s idle. A chunk's time includes making its batches on the host (both)
and, for attnlab, putting them on the device. steps/s is the median over the chunks after the first;
attnlab's first chunk also compiles: compile_s = first chunk − median chunk. Val loss: the task's 256
val windows, the same for both, after the last step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import _isa  # benchmarks/ is on sys.path when run as a script

CAP = _isa.apply_cap(sys.argv[1:]) if __name__ == "__main__" else None  # before jax and torch load

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from attnlab import config as config_lib, parallel, train  # noqa: E402
from attnlab.rundata import RunData  # noqa: E402


def make_config(args):
  c = config_lib.load_file("configs/shakespeare.py")
  c.unlock()
  c.task.kwargs = {"seq_len": args.seq_len, "eval_size": 256}
  c.model.kwargs = {"d_model": args.d_model, "num_layers": args.layers, "dropout_rate": 0.0}
  c.model.attention.num_heads = args.heads
  c.optim.update(name="adamw", learning_rate=args.lr, warmup_steps=args.warmup, schedule="cosine",
                 clip_norm=1.0, b2=0.99, weight_decay=0.1)
  c.train.update(steps=args.steps, batch_size=args.batch, eval_every=args.chunk, eval_batch_size=256,
                 seeds=(args.seed,), attention_maps=False)
  config_lib.validate(c)
  return c


class Attnlab:
  """The runner's programs (attnlab.train.programs) for one seed, stepped one chunk at a time."""

  def __init__(self, config):
    self.task = train.make_task(config)
    cls = train.model_class(config, self.task)
    self.total, self.every = config.train.steps, config.train.eval_every
    self.data = RunData(self.task, config, list(config.train.seeds), parallel.make_mesh())
    self.prog, keys, rates = train.programs(config, self.task, cls, self.data)
    params, rest, opt = self.prog.init(keys, rates)
    state = (params, rest, opt, self.prog.es_init(params, rest, self.total))
    self.state = parallel.replicate(state, self.data.mesh)  # as the runner does (one compile)
    self.all_live = jnp.ones((self.every,), bool)

  def initial_params(self):
    return jax.tree.map(lambda x: np.asarray(x[0]), self.state[0].to_pure_dict())  # member 0

  def chunk(self, at):
    """Steps at+1 .. at+K; returns the last step's train loss (waits for the device)."""
    params, rest, opt, es = self.state
    batches = self.data.train(at, self.every, self.total)
    live = self.all_live if at + self.every <= self.total else jnp.arange(at, at + self.every) < self.total
    params, rest, opt, es, metrics = self.prog.train_chunk(params, rest, opt, es, batches, live, at)
    self.state = (params, rest, opt, es)
    n = min(self.every, self.total - at)
    return float(jax.block_until_ready(metrics["loss"])[n - 1, 0])

  def val_loss(self):
    params, rest, _, es = self.state
    _, val = self.prog.validate(params, rest, es, self.data.eval["val"], self.total)
    return float(val["loss"][0])


def torch_gpt(vocab, seq_len, d, layers, heads, init):
  """A GPT in plain torch with attnlab's parameter values ``init`` (the lm model's state)."""
  import torch  # noqa: PLC0415
  from torch import nn  # noqa: PLC0415
  f = torch.nn.functional

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
      self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
      self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):  # [B, L, d]
      b, n, _ = x.shape
      q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
      a = f.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, L, d/H]
      x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
      return x + self.down(f.gelu(self.up(self.ln2(x)), approximate="tanh"))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
      self.blocks = nn.ModuleList([Block() for _ in range(layers)])
      self.ln_f, self.head = nn.LayerNorm(d, eps=1e-6), nn.Linear(d, vocab)

    def forward(self, idx):  # [B, L] -> logits [B, L, V]
      x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))[None]
      for block in self.blocks:
        x = block(x)
      return self.head(self.ln_f(x))

  model = GPT()
  t = lambda a: torch.from_numpy(np.array(a, np.float32))  # a writable copy
  dense = lambda p: (t(p["kernel"].reshape(-1, p["kernel"].shape[-1]).T), t(p["bias"].reshape(-1)))
  with torch.no_grad():
    model.tok.weight.copy_(t(init["embed"]["embed"]["embedding"]))
    model.pos.weight.copy_(t(init["embed"]["pos"]["embedding"]))
    for blk, p in zip(model.blocks, init["decoder"]["blocks"].values()):
      a = p["self_attn"]
      qkv = [a[n]["kernel"].reshape(d, d).T for n in ("query", "key", "value")]
      blk.qkv.weight.copy_(t(np.concatenate(qkv, 0)))
      blk.qkv.bias.copy_(t(np.concatenate([a[n]["bias"].reshape(-1) for n in ("query", "key", "value")])))
      blk.proj.weight.copy_(t(a["out"]["kernel"].reshape(d, d).T))
      blk.proj.bias.copy_(t(a["out"]["bias"]))
      for mod, src in ((blk.up, p["mlp"]["up"]), (blk.down, p["mlp"]["down"])):
        mod.weight.copy_(dense(src)[0])
        mod.bias.copy_(dense(src)[1])
      for ln, src in ((blk.ln1, p["ln_self"]), (blk.ln2, p["ln_mlp"])):
        ln.weight.copy_(t(src["scale"]))
        ln.bias.copy_(t(src["bias"]))
    model.ln_f.weight.copy_(t(init["decoder"]["ln_out"]["scale"]))
    model.ln_f.bias.copy_(t(init["decoder"]["ln_out"]["bias"]))
    model.head.weight.copy_(dense(init["head"])[0])
    model.head.bias.copy_(dense(init["head"])[1])
  return model


class Torch:
  def __init__(self, args, task, init, threads):
    import torch  # noqa: PLC0415
    torch.set_num_threads(threads)
    self.torch, self.task, self.args = torch, task, args
    self.model = torch_gpt(task.spec["vocab_size"], args.seq_len, args.d_model, args.layers, args.heads,
                           init)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr, betas=(0.9, 0.99), eps=1e-8,
                                 weight_decay=0.1)
    warm, total = args.warmup, max(args.steps, args.warmup + 1)  # as attnlab.steps._schedule

    def factor(step):  # optax.warmup_cosine_decay_schedule(0, 1, warm, total) at optimiser step `step`
      if step < warm:
        return step / warm
      return 0.5 * (1 + np.cos(np.pi * min(step - warm, total - warm) / (total - warm)))
    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)

  def chunk(self, at):
    torch, f = self.torch, self.torch.nn.functional
    loss = None
    for step in range(at, min(at + self.args.chunk, self.args.steps)):
      batch = self.task.batch("train", step, self.args.batch, seed=self.args.seed)
      x, y = (torch.from_numpy(batch[k].astype(np.int64)) for k in ("inputs", "labels"))
      logits = self.model(x)
      loss = f.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
      self.opt.step()
      self.sched.step()
    return loss.item()

  def val_loss(self, val_batches):
    torch, f = self.torch, self.torch.nn.functional
    losses = []
    with torch.no_grad():
      for x, y in val_batches:
        logits = self.model(torch.from_numpy(x.astype(np.int64)))
        losses.append(float(f.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                            torch.from_numpy(y.astype(np.int64)).reshape(-1))))
    return float(np.mean(losses))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=2000)
  ap.add_argument("--chunk", type=int, default=100, help="steps per compiled chunk (the runner's eval_every)")
  ap.add_argument("--batch", type=int, default=12)
  ap.add_argument("--seq-len", type=int, default=64)
  ap.add_argument("--d-model", type=int, default=128)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--warmup", type=int, default=100)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--torch-threads", type=int, default=2)
  ap.add_argument("--pause", type=float, default=0.3, help="idle seconds before each timed chunk")
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--max-isa", choices=("none",) + tuple(_isa.CAPS), default="none")
  ap.add_argument("--out", default="benchmarks/lm.json")
  args = ap.parse_args(argv)
  start = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "loadavg_start": os.getloadavg(),
           "argv": sys.argv[1:], "isa": _isa.describe(CAP, not args.skip_torch), "jax": jax.__version__}
  print(f"{start['date']} load average {start['loadavg_start']}\n{start['isa']}", flush=True)
  config = make_config(args)
  ours = Attnlab(config)
  val = ours.data.eval["val"]
  val_batches = [(np.asarray(val["inputs"][i]), np.asarray(val["labels"][i]))
                 for i in range(val["inputs"].shape[0])]
  theirs = None if args.skip_torch else Torch(args, ours.task, ours.initial_params(), args.torch_threads)
  times = {"attnlab": [], "torch": []}
  losses = {"attnlab": [], "torch": []}
  runners = {"attnlab": ours} if theirs is None else {"attnlab": ours, "torch": theirs}
  for at in range(0, args.steps, args.chunk):
    for name, runner in runners.items():
      time.sleep(args.pause)
      t = time.perf_counter()
      losses[name].append(runner.chunk(at))
      times[name].append(time.perf_counter() - t)
    print(f"step {min(at + args.chunk, args.steps):>5}: " + ", ".join(
        f"{n} {times[n][-1]:.2f} s (train loss {losses[n][-1]:.3f})" for n in runners), flush=True)
  result = {**start, "loadavg_end": os.getloadavg(), "steps": args.steps, "chunk": args.chunk,
            "config": config_lib.to_dict(config), "torch_threads": args.torch_threads, "rows": {}}
  for name, runner in runners.items():
    ts = np.asarray(times[name])
    med = float(np.median(ts[1:] if len(ts) > 1 else ts))
    steps_per_chunk = [min(args.chunk, args.steps - at) for at in range(0, args.steps, args.chunk)]
    rate = float(np.median([n / t for n, t in zip(steps_per_chunk[1:], ts[1:])])) if len(ts) > 1 else (
        steps_per_chunk[0] / ts[0])
    vl = runner.val_loss() if name == "attnlab" else runner.val_loss(val_batches)
    result["rows"][name] = {"steps_per_s": rate, "compile_s": float(ts[0] - med), "wall_s": float(ts.sum()),
                            "final_val_loss": vl, "final_train_loss": losses[name][-1],
                            "chunk_s": ts.tolist(), "train_loss": losses[name]}
  print(f"\n{start['isa']}\nload average at the end {result['loadavg_end']}")
  print(f"{'':<8} {'steps/s':>8} {'compile s':>10} {'wall s':>8} {'val loss':>9}")
  for name, r in result["rows"].items():
    print(f"{name:<8} {r['steps_per_s']:>8.1f} {r['compile_s']:>10.1f} {r['wall_s']:>8.1f} "
          f"{r['final_val_loss']:>9.4f}")
  if theirs is not None:
    rows = result["rows"]
    result["speedup"] = rows["attnlab"]["steps_per_s"] / rows["torch"]["steps_per_s"]
    print(f"attnlab / torch steps/s: {result['speedup']:.2f}x; val loss "
          f"{rows['attnlab']['final_val_loss']:.4f} vs {rows['torch']['final_val_loss']:.4f}")
  with open(args.out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
