"""Score parameters shared by all heads or one set per head: the check both kernels use."""

from __future__ import annotations

from typing import Any, Callable

import jax


def per_head(where: str, name: str, init: Callable[..., Any] | None, params: Any, dim: int,
             heads: int, maker: str) -> bool:
  """Whether ``params`` carry a leading [heads] axis (True) or are shared by all heads (False).

  ``init(rng, dim)`` makes one set; parameter-free scores (``init`` None) must get None. Errors
  name ``where`` (the calling function), the score and ``maker`` (the function that makes params).
  """
  if init is None:
    if params is not None:
      raise ValueError(f"{where}: score {name!r} takes no params, got {type(params).__name__}")
    return False
  if params is None:
    raise ValueError(f"{where}: score {name!r} needs params; make them with "
                     f"attnlab.kernels.{maker}({name!r}, rng, dim={dim})")
  exp_leaves, exp_tree = jax.tree.flatten(jax.eval_shape(lambda: init(jax.random.key(0), dim)))
  leaves, tree = jax.tree.flatten(params)
  if tree != exp_tree:
    raise ValueError(f"{where}: params for score {name!r} must have structure {exp_tree}, got {tree}")
  if all(x.ndim == e.ndim for x, e in zip(leaves, exp_leaves)):
    return False
  if all(x.ndim == e.ndim + 1 and x.shape[0] == heads for x, e in zip(leaves, exp_leaves)):
    return True
  raise ValueError(f"{where}: params for score {name!r} must have leaf ranks "
                   f"{[e.ndim for e in exp_leaves]} (shared) or a leading [{heads}] heads axis, got "
                   f"shapes {[tuple(x.shape) for x in leaves]}")
