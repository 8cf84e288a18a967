"""What each kind of attention attends to: capture the attention weights of one example.

``capture`` runs the trained model once, eagerly, on one evaluation example with ``sow_weights=True``
forced on every ``attnlab.modules`` attention layer, and returns the sown weights as NumPy arrays
keyed by layer path: ``[H, Lq, Lk]`` for sequence layers, ``<path>/edges`` [2, E] and
``<path>/alpha`` [E, H] for graph layers (``dense`` [N, N] adjacency layers give ``[H, N, N]``).
``dense_graph_map`` turns edge weights into an [H, n, n] matrix over the first n nodes for plots.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx

from attnlab import modules


@contextlib.contextmanager
def _forced_sow() -> Iterator[None]:
  classes = (modules.MultiHeadAttention, modules.GraphAttention)
  originals = {cls: cls.__call__ for cls in classes}

  def wrap(call):
    @functools.wraps(call)
    def sowing(self, *args, **kwargs):
      kwargs["sow_weights"] = True
      return call(self, *args, **kwargs)
    return sowing

  try:
    for cls, call in originals.items():
      cls.__call__ = wrap(call)
    yield
  finally:
    for cls, call in originals.items():
      cls.__call__ = call


def capture(graphdef: Any, params: Any, rest: Any, batch: dict[str, np.ndarray],
            family: str) -> dict[str, np.ndarray]:
  """Attention weights of the first example of ``batch`` (the whole graph for node tasks)."""
  if family != "node_classifier":
    batch = {k: np.asarray(v)[:1] for k, v in batch.items()}
  model = nnx.merge(graphdef, params, rest, copy=True)
  with _forced_sow():
    _, sown = nnx.capture(lambda m: m(batch, train=False), nnx.Intermediate)(model)
  out: dict[str, np.ndarray] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(sown))[0]:
    name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    name = name.replace("attention_weights/", "").replace("/0/", "/")
    value = np.asarray(leaf)
    if family != "node_classifier" and value.ndim == 4:
      value = value[0]  # [H, Lq, Lk] of the one example
    out[name] = value
  return out


def dense_graph_map(edges: np.ndarray, alpha: np.ndarray, n: int) -> np.ndarray:
  """Edge weights (edges [2, E] source→target, alpha [E, H]) -> [H, n, n]: row = target node."""
  heads = alpha.shape[-1]
  out = np.zeros((heads, n, n), np.float32)
  src, dst = edges
  keep = (src < n) & (dst < n)
  out[:, dst[keep], src[keep]] = alpha[keep].T
  return out
