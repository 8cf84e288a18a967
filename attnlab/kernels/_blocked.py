"""Blocked (online-softmax, FlashAttention-style) soft attention for any registered score.

The memory-efficient path behind ``attention(..., impl="blocked")``: neither the [Lq, Lk] scores
nor an additive score's [Lq, Lk, A] tensor is ever formed; the live set is O(block_q · block_k · A)
per head. The score is applied generically through the stages of ``scores.Score``: the projections
``fq = project_q(params, q)`` [Lq, F] and ``fk = project_k(params, k)`` [Lk, F] once per head, then
``pairwise(params, fq_i, fk_j)`` on blocks of (query, key) pairs (``blocked_passes.py``: the two
passes, their formulas, masks and causal skipping), so a score registered from outside attnlab gets
the memory-efficient path without writing a kernel.

Heads: ONE ``jax.custom_vjp`` over all heads (``_multihead``) loops over the (example, kv head,
group) slices of q, k, v moved once to head-major [B, H, L, D] (each head's rows contiguous),
writing each head's output (backward: gradients) in place; the residuals are those head-major
inputs, the output and the per-row lse, so nothing is stacked per head. The backward recomputes
blocks (O(L) memory).
Heads run one after another: each head's blocks stay in cache (CPU-tuned; on GPU/TPU the same code
runs, sequentially over heads).

Default blocks (``default_block``): (1024, 512) pairs, fewer when ``pairwise`` forms a larger
[Bq, Bk, ...] intermediate (read from its jaxpr), e.g. (256, 128) for additive with A = 64; keys
no longer than a query block are one key block (N = 1024: (1024, 1024)); causal: square blocks
(512, 512) (additive: (128, 128)).
Outputs match the dense path to ~1e-6 relative in fp32, gradients to ~3e-5 (tests/test_blocked.py).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from attnlab.kernels import _blocked_passes as passes
from attnlab.kernels._blocked_passes import Plan, cdiv, pad_to

Array = jax.Array

KINDS = ("softmax", "sigmoid")
# Default blocks: (query, key) pairs per block, and elements of pairwise's largest intermediate.
MAX_BLOCK_PAIRS = 1024 * 512
MAX_BLOCK_ELEMS = 256 * 128 * 64


def _largest_intermediate_per_pair(pairwise, params, f, dtype) -> int:
  """Elements per (query, key) pair of ``pairwise``'s largest [Bq, Bk, ...] intermediate, read from
  its jaxpr on a small block (1 for a dot product, A for an additive score's [Bq, Bk, A] tanh)."""
  nq, nk = (13, 17) if f not in (13, 17) else (19, 23)  # distinct sizes mark the pair axes
  spec = lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
  jaxpr = jax.make_jaxpr(pairwise)(jax.tree.map(spec, params), jax.ShapeDtypeStruct((nq, f), dtype),
                                   jax.ShapeDtypeStruct((nk, f), dtype))
  largest = nq * nk

  def visit(jx):
    nonlocal largest
    for eqn in jx.eqns:
      for var in eqn.outvars:
        shape = tuple(getattr(var.aval, "shape", ()))
        if nq in shape and nk in shape:
          largest = max(largest, math.prod(shape))
      for sub in eqn.params.values():
        for s in (sub if isinstance(sub, (tuple, list)) else (sub,)):
          inner = getattr(s, "jaxpr", s)
          if hasattr(inner, "eqns"):
            visit(inner)

  visit(jaxpr.jaxpr)
  return cdiv(largest, nq * nk)


def default_block(pairwise, params, f: int, dtype, lk: int | None = None,
                  causal: bool = False) -> tuple[int, int]:
  """(block_q, block_k): MAX_BLOCK_PAIRS pairs, fewer when pairwise's largest intermediate would
  exceed MAX_BLOCK_ELEMS, as (2·b, b) with b a power of two; keys no longer than a query block
  (``lk`` ≤ 2·b) are one key block (up to twice those pairs, no online rescaling). Causal: square
  (b, b) blocks, so that about half of the blocks are skipped and most others need no mask.

  Tuned on a 2-core CPU, where large blocks keep the matmuls efficient: (1024, 512) for
  dot-product scores, (256, 128) for additive/concat (A = 64); one key block when the keys fit
  (docs/performance.md, "Block sizes"). On GPU/TPU the same values are valid (smaller ones may be
  faster: pass ``block_size``).
  """
  per_pair = _largest_intermediate_per_pair(pairwise, params, f, dtype)
  pairs = max(2 * 8 * 8, min(MAX_BLOCK_PAIRS, MAX_BLOCK_ELEMS // per_pair))
  bk = 2 ** int(math.log2(math.isqrt(pairs // 2)))
  if causal:
    return bk, bk
  return 2 * bk, (lk if lk is not None and lk <= 2 * bk else bk)


class _Heads:
  """The (example, kv head, group) slices of head-major q [B, Hkv, G, Lq, D], k/v [B, Hkv, Lk, D|Dv],
  mask [B|1, Hkv|1, G|1, Lq|1, Lk|1] and per-head params [Hkv, G, ...]: slice s = (b, kv, g)."""

  def __init__(self, b, hkv, g, per_head):
    self.b, self.hkv, self.g, self.per_head, self.n = b, hkv, g, per_head, b * hkv * g

  def index(self, s):
    return s // (self.hkv * self.g), (s // self.g) % self.hkv, s % self.g

  def take(self, s, params, q, k, v, mask):
    """One head's (params, q [Lq, D], k [Lk, D], v [Lk, Dv], mask [Lq|1, Lk|1] or None) from the
    head-major q [B, Hkv, G, Lq, D] and k/v [B, Hkv, Lk, D|Dv] (each head's rows contiguous)."""
    b, kv, g = self.index(s)
    pick = lambda x, i: x[i if x.shape[0] > 1 else 0]  # a leading axis of size n or 1
    m = None if mask is None else pick(pick(pick(mask, b), kv), g)
    p = jax.tree.map(lambda x: x[kv, g], params) if self.per_head else params
    return p, q[b, kv, g], k[b, kv], v[b, kv], m


def major(x):
  """[B, L, Hkv, (G,) D] -> head-major [B, Hkv, (G,) L, D]."""
  return jnp.moveaxis(x, 1, -2)


def minor(x):
  """Head-major [B, Hkv, (G,) L, D] -> [B, L, Hkv, (G,) D]."""
  return jnp.moveaxis(x, -2, 1)


def head_major_vjp(forward, backward):
  """The custom_vjp (params, q, k, v, mask, bias) -> out [B, Lq, Hkv, G, Dv] in the callers' layout
  around a head-major ``forward(params, qt, kt, vt, mask, bias) -> (out_t, lse)`` and
  ``backward(res, dout_t) -> (dparams, dq_t, dk_t, dv_t, dbias)``, res = (params, qt, kt, vt, mask,
  bias, out_t, lse): q, k, v go to head-major once, out and the gradients come back once."""

  @jax.custom_vjp
  def core(params, q, k, v, mask, bias):
    return minor(forward(params, major(q), major(k), major(v), mask, bias)[0])

  def fwd(params, q, k, v, mask, bias):
    qt, kt, vt = major(q), major(k), major(v)
    out, lse = forward(params, qt, kt, vt, mask, bias)
    return minor(out), (params, qt, kt, vt, mask, bias, out, lse)

  def bwd(res, dout):
    dparams, dq, dk, dv, dbias = backward(res, major(dout))
    return dparams, minor(dq), minor(dk), minor(dv), None, dbias

  core.defvjp(fwd, bwd)
  return core


def _multihead(score: Any, kind: str, plan: Plan, heads: _Heads):
  """The custom_vjp (params, q, k, v, mask, bias) -> out [B, Lq, Hkv, G, Dv]: the one-head passes
  looped over the heads inside ONE custom_vjp on head-major copies of q, k, v (one transpose each
  way: a head's [L, D] rows are then contiguous, so reading them is a plain slice, not a strided
  gather per head); the residuals are those copies, out and the per-row lse (nothing is stacked
  per head)."""
  lq, lk = plan.lq, plan.lk

  def project(p, q1, k1):  # the score's projections, autodiffed (cheap next to the blocks)
    return score.project_q(p, q1), score.project_k(p, k1)  # [Lq, F], [Lk, F]

  def padded(fq, fk, v1):
    return (pad_to(fq, 0, plan.nq * plan.bq), pad_to(fk, 0, plan.nk * plan.bk),
            pad_to(v1, 0, plan.nk * plan.bk))

  def forward(params, qt, kt, vt, mask, bias):  # qt [B, Hkv, G, Lq, D], kt/vt [B, Hkv, Lk, D]
    def head(s, carry):
      out, lse = carry
      p, q1, k1, v1, m = heads.take(s, params, qt, kt, vt, mask)
      o1, l1 = passes.forward(score.pairwise, kind, plan, p, *padded(*project(p, q1, k1), v1), m, bias)
      b, kv, g = heads.index(s)
      out = jax.lax.dynamic_update_slice(out, o1[:lq].astype(out.dtype)[None, None, None],
                                         (b, kv, g, 0, 0))
      return out, jax.lax.dynamic_update_index_in_dim(lse, l1, s, 0)

    init = (jnp.zeros(qt.shape[:-1] + vt.shape[-1:], qt.dtype),  # [B, Hkv, G, Lq, Dv]
            jnp.zeros((heads.n, plan.nq * plan.bq), jnp.float32))  # [S, Lq (padded)]
    return jax.lax.fori_loop(0, heads.n, head, init)

  def backward(res, dout):  # head-major, as forward
    params, q, k, v, mask, bias, out, lse = res
    f32 = lambda x: jnp.zeros(x.shape, jnp.float32)

    def head(s, carry):
      dparams, dq, dk, dv, dbias = carry
      p, q1, k1, v1, m = heads.take(s, params, q, k, v, mask)
      b, kv, g = heads.index(s)
      (fq, fk), proj_vjp = jax.vjp(project, p, q1, k1)
      o1, do1 = out[b, kv, g], dout[b, kv, g]  # [Lq, Dv]
      lq_p = plan.nq * plan.bq
      dpp, dfq, dfk, dv1, db = passes.backward(
          score.pairwise, kind, plan, p, *padded(fq, fk, v1), m, bias, pad_to(o1, 0, lq_p), lse[s],
          pad_to(do1, 0, lq_p))
      dpq, dq1, dk1 = proj_vjp((dfq[:lq].astype(fq.dtype), dfk[:lk].astype(fk.dtype)))
      dp1 = jax.tree.map(lambda a, c: a + c.astype(jnp.float32), dpp, dpq)
      if heads.per_head:
        dparams = jax.tree.map(lambda acc, x: acc.at[kv, g].add(x), dparams, dp1)
      else:
        dparams = jax.tree.map(jnp.add, dparams, dp1)
      dq = jax.lax.dynamic_update_slice(dq, dq1.astype(dq.dtype)[None, None, None], (b, kv, g, 0, 0))
      add_kv = lambda acc, x: jax.lax.dynamic_update_slice(  # k/v heads are shared by the G group
          acc, (acc[b, kv] + x.astype(jnp.float32))[None, None], (b, kv, 0, 0))
      return dparams, dq, add_kv(dk, dk1), add_kv(dv, dv1[:lk]), dbias + db

    init = (jax.tree.map(f32, params), jnp.zeros(q.shape, q.dtype), f32(k), f32(v),
            jnp.zeros((), jnp.float32))
    dparams, dq, dk, dv, dbias = jax.lax.fori_loop(0, heads.n, head, init)
    cast = lambda gr, x: gr.astype(x.dtype)
    return jax.tree.map(cast, dparams, params), dq, cast(dk, k), cast(dv, v), cast(dbias, bias)

  return head_major_vjp(forward, backward)


def attend_blocked(q: Array, k: Array, v: Array, mask: Array | None, *, score: Any, kind: str,
                   params: Any = None, per_head: bool = False, bias: Array | None = None,
                   causal: bool = False, block_q: int | None = None,
                   block_k: int | None = None) -> Array:
  """Soft attention, blocked, for all heads: each (example, kv head, group) slice is one call of
  the one-head passes of ``blocked_passes``, one slice after another (each head's blocks stay in cache).

  Args:
    q: [B, Lq, Hkv, G, D] queries (query head h = (kv, g) reads key/value head kv: GQA).
    k: [B, Lk, Hkv, D] keys.  v: [B, Lk, Hkv, Dv] values.
    mask: bool [B|1, Hkv|1, G|1, Lq|1, Lk|1] (True = may attend) or None; causal is separate.
    score: a ``scores.Score``; kind: "softmax" or "sigmoid".
    params: the score's parameters, leaves [Hkv, G, ...] if ``per_head`` else shared.
    bias: the sigmoid's scalar bias (default −log Lk).
    block_q, block_k: block sizes (clipped to the lengths); None: ``default_block``.
  Returns:
    z [B, Lq, Hkv, G, Dv] in q's dtype.
  """
  if kind not in KINDS:
    raise ValueError(f"attend_blocked: kind must be one of {KINDS}, got {kind!r}")
  b, lq, hkv, g, _ = q.shape
  lk = k.shape[1]
  if block_q is None or block_k is None:
    p0 = jax.tree.map(lambda x: x[0, 0], params) if per_head else params
    fq0 = jax.eval_shape(score.project_q, p0, jax.ShapeDtypeStruct((lq, q.shape[-1]), q.dtype))
    dq, dk = default_block(score.pairwise, p0, fq0.shape[-1], fq0.dtype, lk, causal)
    block_q, block_k = block_q or dq, block_k or dk
  plan = Plan(lq, lk, block_q, block_k, causal)
  bias = jnp.asarray(-math.log(lk) if bias is None else bias, jnp.float32)
  if mask is not None:
    if mask.shape[3] > 1:
      mask = pad_to(mask, 3, plan.nq * plan.bq, False)
    if mask.shape[4] > 1:
      mask = pad_to(mask, 4, plan.nk * plan.bk, False)
  return _multihead(score, kind, plan, _Heads(b, hkv, g, per_head))(params, q, k, v, mask, bias)
