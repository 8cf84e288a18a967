"""Scatter-free segment sums over a fixed incidence (graph edges, sparse-matrix entries).

An ``Incidence`` holds L entries e, each linking an *out* row ``out_index[e]`` to an *in* row
``in_index[e]``: the edges j → i of a graph (out = receiver i, in = sender j) or the stored entries
of a sparse matrix (out = row, in = column). Built once on the host (NumPy), it lists every row's
entries in chunks of fixed width, so that all per-row sums are gathers plus adds:

    gather_sum(table, w, inc)[o] = Σ_{e: out_index[e] = o} w[e] · table[in_index[e]]   # [n_out, ...]
    segment_sum(x, inc)[o]       = Σ_{e: out_index[e] = o} x[e]
    softmax(s, inc)[e]           = softmax of s over the entries sharing e's out row
    take(x, inc, "out" | "in")   = x[out_index] | x[in_index]                      # [L, ...]

Each has a hand-written reverse rule that is another of them on the opposite grouping (the
transpose of a gather by ``in_index`` is a sum grouped by in rows), so gradients never scatter per
entry either. Why: XLA lowers ``jax.ops.segment_sum`` and the transpose of ``x[idx]`` to serial
scatters, and inside a ``vmap`` over seeds they also come with layout transposes
(docs/performance.md, "Scatter-free segment sums"). Plain gathers, adds and one small scatter per
sum run unchanged on any backend.

Layout: row r's entries fill chunk r (``width`` slots), rows with more entries continue in overflow
chunks after the first ``n`` chunks, added in by one scatter over the overflow chunks only. Empty
slots point at entry L, a padding entry holding the neutral value. There is always at least one
overflow chunk (an empty one if no row needs it): its scatter makes XLA:CPU write the sum to
memory once, instead of fusing the chain of gathers into every consumer and recomputing it there
(``lax.optimization_barrier`` does not stop that on XLA:CPU, see attnlab/_prng.py).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.kernels import _dtypes

Array = jax.Array
SIDES = ("out", "in")
WIDTHS = (4, 8, 16, 32)


class Incidence(NamedTuple):
  """Entries grouped by out row and by in row (see the module docstring); all int32 arrays
  (NumPy as ``incidence`` builds them; pass it to jitted functions as an argument)."""
  out_slot: Array   # [C_out, P_out] entry ids by out row (L = padding)
  out_row: Array    # [C_out, P_out] in_index of those entries (0 for padding)
  out_owner: Array  # [C_out - n_out] out row of each overflow chunk
  in_slot: Array    # [C_in, P_in] entry ids by in row
  in_row: Array     # [C_in, P_in] out_index of those entries
  in_owner: Array   # [C_in - n_in]
  out_index: Array  # [L]
  in_index: Array   # [L]

  @property
  def num_out(self) -> int:
    return self.out_slot.shape[0] - self.out_owner.shape[0]

  @property
  def num_in(self) -> int:
    return self.in_slot.shape[0] - self.in_owner.shape[0]


def _chunk_count(deg: np.ndarray, width: int) -> np.ndarray:
  return np.maximum(1, -(-deg // width))


def choose_width(deg: np.ndarray) -> int:
  """The chunk width with the least work: padded slots plus 4 per overflow chunk (its scatter)."""
  cost = [(int(_chunk_count(deg, w).sum()) * w + 4 * int((_chunk_count(deg, w) - 1).sum()), w)
          for w in WIDTHS]
  return min(cost)[1]


def _lists(group: np.ndarray, other: np.ndarray, n: int, width: int | None):
  """(slot, row, owner) chunked lists of the entries grouped by ``group`` (see the docstring)."""
  num = len(group)
  deg = np.bincount(group, minlength=n)
  width = choose_width(deg) if width is None else width
  order = np.lexsort((other, group))  # by group, then by the other side
  g = group[order]
  chunks = _chunk_count(deg, width)
  extra = chunks - 1
  num_chunks = n + int(extra.sum()) + 1  # + 1: the always-present overflow chunk (see docstring)
  slot = np.full((num_chunks, width), num, np.int32)
  row = np.zeros((num_chunks, width), np.int32)
  owner = np.concatenate([np.repeat(np.arange(n), extra), [0]]).astype(np.int32)
  first_extra = n + np.concatenate([[0], np.cumsum(extra)[:-1]]).astype(np.int64)
  pos = np.arange(num) - np.concatenate([[0], np.cumsum(deg)[:-1]])[g]
  chunk = np.where(pos < width, g, first_extra[g] + pos // width - 1)
  slot[chunk, pos % width] = order
  row[chunk, pos % width] = other[order]
  return slot, row, owner


def incidence(out_index, in_index, num_out: int, num_in: int, *,
              width: int | None = None) -> Incidence:
  """Host-side (NumPy, not traceable) ``Incidence`` of entries e: out_index[e] <- in_index[e].

  ``width``: slots per chunk for both groupings (default: picked per grouping from the row sizes,
  one of 4, 8, 16, 32). Entries keep their order: per-entry arrays (weights, scores) use it.
  """
  out_index, in_index = np.asarray(out_index), np.asarray(in_index)
  if out_index.ndim != 1 or out_index.shape != in_index.shape:
    raise ValueError(f"incidence: out_index and in_index must be 1-D of one length, got shapes "
                     f"{out_index.shape} and {in_index.shape}")
  for name, idx, n in (("out_index", out_index, num_out), ("in_index", in_index, num_in)):
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise ValueError(f"incidence: {name} must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")
  if width is not None and width < 1:
    raise ValueError(f"incidence: width must be a positive int, got {width}")
  by_out = _lists(out_index, in_index, num_out, width)
  by_in = _lists(in_index, out_index, num_in, width)
  return Incidence(*by_out, *by_in, out_index.astype(np.int32), in_index.astype(np.int32))


def _check_side(side: str) -> None:
  if side not in SIDES:
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")


def _grouping(inc: Incidence, side: str):
  _check_side(side)
  return ((inc.out_slot, inc.out_row, inc.out_owner, inc.num_out) if side == "out"
          else (inc.in_slot, inc.in_row, inc.in_owner, inc.num_in))


def _rows(x: Array, index: Array) -> Array:
  """x[index] without jnp's wrap of negative indices (an incidence's ids are checked >= 0 when it
  is built): the same gather with three fewer ops per index array to trace and run."""
  return jnp.asarray(x).at[index].get(wrap_negative_indices=False)


_COMBINE = {"add": jnp.add, "max": jnp.maximum}


def _chunked(term, op, slot, owner, n):
  """op ("add" | "max") of term(chunk rows, p) over the slots; overflow chunks scattered into their
  owners (ids >= 0, as in _rows)."""
  def total(rows):
    return functools.reduce(_COMBINE[op], [term(rows, p) for p in range(slot.shape[1])])
  head, tail = total(slice(0, n)), total(slice(n, None))  # [n, ...], [C - n, ...]
  return getattr(head.at[owner], op)(tail, wrap_negative_indices=False)


def _pad(x: Array, fill: float) -> Array:
  return jnp.concatenate([x, jnp.full((1,) + x.shape[1:], fill, x.dtype)])  # [L + 1, ...]


def _expand(w: Array, ndim: int) -> Array:
  return w.reshape(w.shape + (1,) * (ndim - w.ndim))


def _reduce(x: Array, inc: Incidence, side: str, op: str) -> Array:
  slot, _, owner, n = _grouping(inc, side)
  xp = _pad(x, 0.0 if op == "add" else -jnp.inf)
  return _chunked(lambda rows, p: _rows(xp, slot[rows, p]), op, slot, owner, n)


def _gather_sum(table: Array, w: Array, inc: Incidence, side: str) -> Array:
  slot, row, owner, n = _grouping(inc, side)
  wp = _pad(w, 0.0)
  term = lambda rows, p: _rows(table, row[rows, p]) * _expand(_rows(wp, slot[rows, p]), table.ndim)
  return _chunked(term, "add", slot, owner, n)


def _index(inc: Incidence, side: str) -> Array:
  _check_side(side)
  return inc.out_index if side == "out" else inc.in_index


def _check_rows(fn: str, name: str, x: Array, rows: int, what: str) -> None:
  if x.ndim < 1 or x.shape[0] != rows:
    raise ValueError(f"{fn}: {name} must have {rows} rows ({what}), got shape {x.shape}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def take(x: Array, inc: Incidence, side: str) -> Array:
  """x [n_side, ...] -> [L, ...]: each entry's row on ``side`` ("out" or "in")."""
  _check_rows("take", "x", x, _grouping(inc, side)[3], f"one per {side} row")
  return _rows(x, _index(inc, side))


take.defvjp(lambda x, inc, side: (take(x, inc, side), inc),
            lambda side, inc, g: (_reduce(g, inc, side, "add"), None))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def segment_sum(x: Array, inc: Incidence, side: str = "out") -> Array:
  """x [L, ...] -> [n_side, ...]: the sum of the entries of each row on ``side``."""
  _check_rows("segment_sum", "x", x, inc.out_index.shape[0], "one per entry")
  return _reduce(x, inc, side, "add")


segment_sum.defvjp(lambda x, inc, side: (segment_sum(x, inc, side), inc),
                   lambda side, inc, g: (_rows(g, _index(inc, side)), None))


def segment_max(x: Array, inc: Incidence, side: str = "out") -> Array:
  """x [L, ...] -> [n_side, ...]: the max over each row's entries (-inf for rows without)."""
  _check_rows("segment_max", "x", x, inc.out_index.shape[0], "one per entry")
  return _reduce(x, inc, side, "max")


def softmax(scores: Array, inc: Incidence) -> Array:
  """scores [L, ...] -> α [L, ...]: softmax over the entries sharing an out row (in float32 at
  least; α has the scores' dtype)."""
  _check_rows("segment_softmax", "scores", scores, inc.out_index.shape[0], "one per entry")
  return _segment_softmax(_dtypes.upcast(scores), inc).astype(scores.dtype)


@jax.custom_vjp
def _segment_softmax(scores: Array, inc: Incidence) -> Array:
  m = jax.lax.stop_gradient(segment_max(scores, inc))  # [n_out, ...]
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  e = jnp.exp(scores - _rows(m, inc.out_index))  # [L, ...]
  total = _reduce(e, inc, "out", "add")  # [n_out, ...]
  return e / _rows(total, inc.out_index)


def _softmax_bwd(res, g):
  alpha, inc = res
  dot = _reduce(alpha * g, inc, "out", "add")  # [n_out, ...]
  return alpha * (g - _rows(dot, inc.out_index)), None


def _softmax_fwd(scores, inc):
  alpha = _segment_softmax(scores, inc)
  return alpha, (alpha, inc)


_segment_softmax.defvjp(_softmax_fwd, _softmax_bwd)


@jax.custom_vjp
def gather_sum(table: Array, weights: Array, inc: Incidence) -> Array:
  """out[o] = Σ_{e: out_index[e] = o} weights[e] · table[in_index[e]].

  table [n_in, *T], weights [L, *W] with W a prefix of T (e.g. table [N, H, F], weights [L, H]:
  per-head attention weights; or table [F_in, D], weights [L]: a sparse matrix's values).
  Returns [n_out, *T]. The reverse rule is a gather_sum grouped by in rows (for the table) and a
  per-entry dot product (for the weights; dropped by XLA when nothing needs it).
  """
  _check_rows("gather_sum", "table", table, inc.num_in, "one per in row")
  _check_rows("gather_sum", "weights", weights, inc.out_index.shape[0], "one per entry")
  if weights.shape[1:] != table.shape[1:weights.ndim]:
    raise ValueError(f"gather_sum: weights [L, *W] need W a prefix of the table's trailing shape "
                     f"{table.shape[1:]}, got weights shape {weights.shape}")
  return _gather_sum(table, weights, inc, "out")


def _gather_sum_bwd(res, g):
  table, weights, inc = res
  d_table = _gather_sum(g, weights, inc, "in")  # [n_in, *T]
  prod = _rows(g, inc.out_index) * _rows(table, inc.in_index)  # [L, *T]
  prod = prod.reshape(prod.shape[:weights.ndim] + (-1,))  # [L, *W, K]
  d_w = jnp.sum(prod, axis=-1)  # [L, *W]
  return d_table, d_w.astype(weights.dtype), None


gather_sum.defvjp(lambda t, w, inc: (gather_sum(t, w, inc), (t, w, inc)), _gather_sum_bwd)


class SparseMatrix(NamedTuple):
  """A sparse [n_out, n_in] matrix: ``values`` [L] at (out_index, in_index) of ``incidence``
  (e.g. bag-of-words node features: out = node, in = feature). ``x @ w`` is ``matmul(x, w)``."""
  values: Array
  incidence: Incidence

  @property
  def shape(self) -> tuple[int, int]:
    return (self.incidence.num_out, self.incidence.num_in)

  @property
  def ndim(self) -> int:
    return 2


def matmul(x: SparseMatrix, w: Array) -> Array:
  """x [n_out, n_in] (sparse) @ w [n_in, ...] -> [n_out, ...] at O(L) cost, scatter-free."""
  return gather_sum(w, x.values, x.incidence)
