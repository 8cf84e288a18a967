"""PyTorch Geometric's GATConv on Cora with GAT's recipe, for side-by-side timing with attnlab.

    pip install torch torch_geometric   # not attnlab dependencies; for this comparison only
    python benchmarks/cora_pyg.py --seeds 0,1,2

One seed at a time (as PyG users run it): 2 GATConv layers (8 heads x 8 hidden, concat; 1 output
head), ELU, dropout 0.6 on each layer's input and on the attention coefficients, Adam lr 0.005 with
weight decay 5e-4, row-normalised features, and the early-stopping rule of configs/cora_gat.py
(patience 100 on val loss and accuracy; the state kept is the last at which both were at their
best). GATConv has no dropout on the projected values (attnlab's ``value_dropout``). The Planetoid
files are read from ``--data_dir`` (default: the Cora copy shipped with attnlab) through symlinks in
a temporary directory (PyG writes its processed copy there). Prints, per seed: epochs run, kept
epoch, test accuracy, wall time.
"""

from __future__ import annotations

import argparse
import copy
import os
import pathlib
import tempfile
import time

from attnlab.data import paths

FILES = paths.PLANETOID_PARTS


def run_seed(data, num_features, num_classes, seed):
  import torch  # noqa: PLC0415
  import torch.nn.functional as F  # noqa: PLC0415
  from torch_geometric.nn import GATConv  # noqa: PLC0415

  class GAT(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.c1 = GATConv(num_features, 8, heads=8, dropout=0.6)
      self.c2 = GATConv(64, num_classes, heads=1, concat=False, dropout=0.6)

    def forward(self, x, edge_index):
      x = F.elu(self.c1(F.dropout(x, 0.6, self.training), edge_index))  # [N, 64]
      return self.c2(F.dropout(x, 0.6, self.training), edge_index)  # [N, C]

  torch.manual_seed(seed)
  model = GAT()
  opt = torch.optim.Adam(model.parameters(), lr=0.005, weight_decay=5e-4)
  best_acc, best_loss, count, kept, kept_epoch, epoch = 0.0, float("inf"), 0, None, 0, 0
  start = time.perf_counter()
  while count < 100:
    epoch += 1
    model.train()
    opt.zero_grad()
    out = model(data.x, data.edge_index)
    F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
      out = model(data.x, data.edge_index)[data.val_mask]
      loss = F.cross_entropy(out, data.y[data.val_mask]).item()
      acc = (out.argmax(1) == data.y[data.val_mask]).float().mean().item()
    if acc >= best_acc or loss <= best_loss:
      if acc >= best_acc and loss <= best_loss:
        kept, kept_epoch = copy.deepcopy(model.state_dict()), epoch
      best_acc, best_loss, count = max(acc, best_acc), min(loss, best_loss), 0
    else:
      count += 1
  wall = time.perf_counter() - start
  model.load_state_dict(kept)
  model.eval()
  with torch.no_grad():
    pred = model(data.x, data.edge_index)[data.test_mask].argmax(1)
  test = (pred == data.y[data.test_mask]).float().mean().item()
  return epoch, kept_epoch, test, wall


def _seeds(text: str) -> list[int]:
  try:
    return [int(s) for s in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--seeds must be comma-separated integers, got {text!r}") from None


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data_dir", default=None, help="directory of the Planetoid ind.cora.* files "
                  "(default: attnlab.data.paths, i.e. the copy shipped with attnlab)")
  ap.add_argument("--seeds", default="0", type=_seeds, help="comma-separated integers, e.g. 0,1,2")
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  args = ap.parse_args(argv)
  try:
    import torch  # noqa: PLC0415
    import torch_geometric.transforms as T  # noqa: PLC0415
    from torch_geometric.datasets import Planetoid  # noqa: PLC0415
  except ImportError as e:
    raise SystemExit(f"cora_pyg.py needs torch and torch_geometric ({e}); "
                     "pip install torch torch_geometric") from None
  src = pathlib.Path(args.data_dir or paths.planetoid_dir("cora")).resolve()
  missing = [f"ind.cora.{f}" for f in FILES if not (src / f"ind.cora.{f}").exists()]
  if missing:
    raise SystemExit(f"--data_dir {str(src)!r} lacks {', '.join(missing)}")
  torch.set_num_threads(args.threads)
  print(f"torch {torch.__version__}, threads {args.threads}")
  print(f"{'seed':>4} {'epochs':>6} {'kept':>5} {'test acc':>9} {'wall':>8} {'per epoch':>10}")
  with tempfile.TemporaryDirectory() as root:
    raw = pathlib.Path(root, "Cora", "raw")
    raw.mkdir(parents=True)
    for f in FILES:
      (raw / f"ind.cora.{f}").symlink_to(src / f"ind.cora.{f}")
    ds = Planetoid(root, "Cora", transform=T.NormalizeFeatures())
    for seed in args.seeds:
      epochs, kept, test, wall = run_seed(ds[0], ds.num_features, ds.num_classes, seed)
      print(f"{seed:>4} {epochs:>6} {kept:>5} {100 * test:>8.2f}% {wall:>7.1f}s "
            f"{1e3 * wall / epochs:>7.1f} ms")


if __name__ == "__main__":
  main()
