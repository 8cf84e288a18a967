"""The two passes of blocked (online-softmax, FlashAttention-style) attention for ONE head.

``blocked.py`` calls them once per head inside its ``jax.custom_vjp``; they take the score's
projected features ``fq`` [Lq, F] and ``fk`` [Lk, F] (padded to whole blocks) and apply
``pairwise(params, fq_i, fk_j)`` to blocks of (query, key) pairs, so any registered score works.

Forward (query blocks i outer, key blocks j inner), with scores in log2 units s' = s · log2 e:

    softmax: m_i ← max(m_i, max_j s'_ij);  c = 2^(m_old − m_i);  p = 2^(s' − m_i)
             l_i ← c·l_i + Σ_j p_ij;  acc_i ← c·acc_i + p v_j;       out_i = acc_i / l_i
    sigmoid: a = σ(s + b) = 1 / (1 + 2^(−(s + b)·log2 e));            out_i = Σ_j a_ij v_j

Backward (key blocks j outer, query blocks i inner) recomputes each block from the saved output
and the per-row log2-sum-exp (softmax), never the weights:

    p = 2^(s' − lse'_i);  dV_j += pᵀ dO_i;  dP = dO_i v_jᵀ;  dS = p ⊙ (dP − rowsum(dO ⊙ O)_i)
    sigmoid: dS = dP ⊙ a(1 − a);  then (dparams, dfq_i, dfk_j) = vjp(pairwise)(dS)

Masks: causal from block indices. Blocks wholly above the diagonal are skipped in both passes (the
loop bounds depend on the block index); blocks wholly below it run in a loop of their own with no
causal mask (``Plan.k_full``/``q_full``), so only the blocks on the diagonal pay for it. A user
mask [Lq|1, Lk|1] is sliced per block (size-1 dims stay size 1); ragged key tails are masked by
index. ``exp2`` is ``fastmath.exp2`` (≤ 2e-7
relative); a score's ``tanh`` is its own (``jnp.tanh``, which XLA vectorises). Fully masked rows
give zero output, as in the dense path.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from attnlab.kernels import _fastmath as fastmath, scores

Array = jax.Array

LOG2E = math.log2(math.e)
# Initial running max (log2 units): finite, so 2^(m_old − m_new) is never NaN. The running
# statistics are float32 for every input dtype (float16 inputs too), so one constant serves all.
_NEG = -1e30


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def pad_to(x: Array, axis: int, size: int, value=0) -> Array:
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _balanced(n: int, block: int) -> int:
  """The block size (≤ ~block, a multiple of 8 or n) that splits n into as many blocks as ``block``
  does with the least padding: 1500 with 1024 -> 2 blocks of 752, not 1024 + 476 padded to 1024."""
  if n <= block:
    return n
  return min(n, -(-cdiv(n, cdiv(n, block)) // 8) * 8)


class Plan:
  """Static block geometry of one call."""

  def __init__(self, lq, lk, block_q, block_k, causal):
    self.lq, self.lk, self.causal = lq, lk, causal
    self.bq, self.bk = _balanced(lq, block_q), _balanced(lk, block_k)
    self.nq, self.nk = cdiv(lq, self.bq), cdiv(lk, self.bk)
    self.ragged_k = self.nk * self.bk != lk

  def k_hi(self, i):
    """One past the last key block that query block i sees."""
    if not self.causal:
      return self.nk
    return jnp.minimum(self.nk, ((i + 1) * self.bq - 1) // self.bk + 1)

  def k_full(self, i):
    """Key blocks [0, k_full) are wholly visible to query block i (no causal mask there); blocks
    [k_full, k_hi) straddle the diagonal."""
    if not self.causal:
      return self.nk
    return jnp.minimum(self.k_hi(i), (i * self.bq + 1) // self.bk)

  def q_lo(self, j):
    """The first query block that sees key block j."""
    if not self.causal:
      return 0
    return jnp.minimum(self.nq, (j * self.bk) // self.bq)

  def q_full(self, j):
    """Query blocks [q_full, nq) see key block j whole; [q_lo, q_full) straddle the diagonal."""
    if not self.causal:
      return 0
    return jnp.clip(((j + 1) * self.bk - 1 + self.bq - 1) // self.bq, self.q_lo(j), self.nq)

  def block_mask(self, mask, i, j, diagonal=True):
    """bool [Bq|1, Bk|1] for block (i, j), or None when nothing is masked. ``diagonal=False``: a
    block below the causal diagonal (no causal mask)."""
    m = None
    causal = self.causal and diagonal
    if self.ragged_k or causal:
      kidx = j * self.bk + jnp.arange(self.bk)[None, :]  # [1, Bk]
      if self.ragged_k:
        m = kidx < self.lk
      if causal:
        qidx = i * self.bq + jnp.arange(self.bq)[:, None]  # [Bq, 1]
        c = qidx >= kidx
        m = c if m is None else m & c
    if mask is not None:
      rows = self.bq if mask.shape[0] > 1 else 1
      cols = self.bk if mask.shape[1] > 1 else 1
      mb = jax.lax.dynamic_slice(mask, (i * self.bq if rows > 1 else 0, j * self.bk if cols > 1 else 0),
                                 (rows, cols))
      m = mb if m is None else m & mb
    return m


def _fori(lo, hi, body, carry):
  """fori_loop, left out when the bounds are equal Python ints (no diagonal blocks)."""
  if isinstance(lo, int) and isinstance(hi, int) and lo == hi:
    return carry
  return jax.lax.fori_loop(lo, hi, body, carry)


def _scores(pairwise, params, fq_i, fk_j):
  return pairwise(params, fq_i, fk_j).astype(jnp.float32)  # [Bq, Bk]


def _weights(kind, s2, bias, m, lse):
  """From scores in log2 units s' = s·log2 e: softmax 2^(s' − lse') (lse broadcastable to s');
  sigmoid σ(s + b); exactly 0 where m is False."""
  if kind == "softmax":
    x = s2 - lse
    if m is not None:
      x = jnp.where(m, x, -jnp.inf)
    return fastmath.exp2(x)
  a = 1.0 / (1.0 + fastmath.exp2(-(s2 + bias * LOG2E)))
  return a if m is None else jnp.where(m, a, 0.0)


def _folds_log2e(pairwise, fq) -> bool:
  """Whether log2 e is folded into fq (dot family in fp32; a bf16 fq would round it once more)."""
  return pairwise is scores.dot_pairwise and fq.dtype == jnp.float32


def _dscores(kind, a, dp, delta, dbias):
  """dS from the weights a and dP = dO vᵀ (either both [Bq, Bk] or both transposed)."""
  if kind == "softmax":
    return a * (dp - delta), dbias
  ds = dp * a * (1.0 - a)
  return ds, dbias + jnp.sum(ds)


def forward(pairwise, kind, plan, params, fq, fk, v, mask, bias):
  """out [nq·Bq, Dv] (f32) and lse' [nq·Bq] (log2 units; softmax only)."""
  f, dv = fq.shape[-1], v.shape[-1]
  fold = _folds_log2e(pairwise, fq)
  fqb = (fq * LOG2E if fold else fq).reshape(plan.nq, plan.bq, f)  # [nq, Bq, F]
  fkb = fk.reshape(plan.nk, plan.bk, f)  # [nk, Bk, F]
  vb = v.reshape(plan.nk, plan.bk, dv)  # [nk, Bk, Dv]

  def q_block(i):
    fq_i = fqb[i]  # [Bq, F]

    def kv_step(j, carry, diagonal):
      m_run, l_run, acc = carry  # [Bq], [Bq], [Bq, Dv]
      s = _scores(pairwise, params, fq_i, fkb[j])  # [Bq, Bk]
      s = s if fold else s * LOG2E  # log2 units
      m = plan.block_mask(mask, i, j, diagonal)
      if kind == "softmax":
        s2 = s
        if m is not None:
          s2 = jnp.where(m, s2, -jnp.inf)
        m_new = jnp.maximum(m_run, jnp.max(s2, axis=-1))  # finite: m_run starts at _NEG
        p = fastmath.exp2(s2 - m_new[:, None])  # [Bq, Bk], 0 where masked
        c = fastmath.exp2(m_run - m_new)
        l_run = c * l_run + jnp.sum(p, axis=-1)
        acc = c[:, None] * acc
        m_run = m_new
      else:
        p = _weights(kind, s, bias, m, None)
      acc = acc + jnp.dot(p.astype(vb.dtype), vb[j], preferred_element_type=jnp.float32)
      return m_run, l_run, acc

    init = (jnp.full((plan.bq,), _NEG, jnp.float32), jnp.zeros((plan.bq,), jnp.float32),
            jnp.zeros((plan.bq, dv), jnp.float32))
    carry = _fori(0, plan.k_full(i), functools.partial(kv_step, diagonal=False), init)
    m_run, l_run, acc = _fori(plan.k_full(i), plan.k_hi(i), functools.partial(kv_step, diagonal=True), carry)
    if kind == "softmax":
      ok = l_run > 0
      out = acc / jnp.where(ok, l_run, 1.0)[:, None]
      lse = jnp.where(ok, m_run + jnp.log2(jnp.where(ok, l_run, 1.0)), _NEG)  # _NEG: no key
    else:
      out, lse = acc, jnp.zeros((plan.bq,), jnp.float32)
    return out, lse

  out, lse = jax.lax.map(q_block, jnp.arange(plan.nq))  # [nq, Bq, Dv], [nq, Bq]
  return out.reshape(plan.nq * plan.bq, dv), lse.reshape(-1)


def backward(pairwise, kind, plan, params, fq, fk, v, mask, bias, out, lse, dout):
  f, dv = fq.shape[-1], v.shape[-1]
  fqb = fq.reshape(plan.nq, plan.bq, f)
  fkb = fk.reshape(plan.nk, plan.bk, f)
  vb = v.reshape(plan.nk, plan.bk, dv)
  dot_family, fold = pairwise is scores.dot_pairwise, _folds_log2e(pairwise, fq)
  # The dot family's sᵀ and dPᵀ as [Bk, 64] x [64, Bq] products (fastest form): fq and dO transposed.
  fq2tb = jnp.swapaxes((fq * LOG2E if fold else fq).astype(jnp.float32).reshape(plan.nq, plan.bq, f),
                       1, 2)  # [nq, F, Bq], scores in log2 units if fold
  dob = dout.astype(jnp.float32).reshape(plan.nq, plan.bq, dv)  # [nq, Bq, Dv]
  lseb = lse.reshape(plan.nq, plan.bq)
  dotb = jnp.swapaxes(dob, 1, 2)  # [nq, Dv, Bq]
  if kind == "softmax":
    delta = jnp.sum(dob * out.reshape(plan.nq, plan.bq, dv), axis=-1)  # [nq, Bq]
  else:
    delta = jnp.zeros((plan.nq, plan.bq), jnp.float32)
  zeros_like = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), t)
  # The dot family (pairwise = fq fkᵀ) works on transposed blocks sᵀ [Bk, Bq]: every product is
  # then a row-major [M, K] x [K, N] or [K, M]ᵀ x [K, N] with M = 64, which XLA:CPU runs faster
  # than the [Bk, Bq]ᵀ x [Bq, D] products of the plain form (docs/performance.md); dq is
  # accumulated transposed, [nq, F, Bq].
  mm = lambda a, b, ca, cb: jax.lax.dot_general(a, b, (((ca,), (cb,)), ((), ())),
                                                 preferred_element_type=jnp.float32)

  def kv_block(carry, j):
    dfq, dparams, dbias = carry
    fk_j, v_j = fkb[j], vb[j]  # [Bk, F], [Bk, Dv]

    def q_step(i, c, diagonal):
      dfq, dparams, dbias, dfk_j, dv_j = c
      fq_i, do_i = fqb[i], dob[i]
      m = plan.block_mask(mask, i, j, diagonal)
      if dot_family:  # transposed blocks aᵀ, dPᵀ, dSᵀ [Bk, Bq]
        fq32, fk32 = fq_i.astype(jnp.float32), fk_j.astype(jnp.float32)
        s2 = mm(fk32, fq2tb[i], 1, 0)  # sᵀ [Bk, Bq]
        a = _weights(kind, s2 if fold else s2 * LOG2E, bias,
                     None if m is None else m.T, lseb[i][None, :])
        dv_j = dv_j + mm(a, do_i, 1, 0)  # [Bk, Dv]
        ds, dbias = _dscores(kind, a, mm(v_j.astype(jnp.float32), dotb[i], 1, 0), delta[i][None, :], dbias)
        g_q, g_k = mm(fk32, ds, 0, 0), mm(ds, fq32, 1, 0)  # dqᵀ [F, Bq], dk [Bk, F]
      else:  # any score: blocks [Bq, Bk], pairwise's own vjp
        s, pw_vjp = jax.vjp(lambda p_, a, b: _scores(pairwise, p_, a, b), params, fq_i, fk_j)
        a = _weights(kind, s * LOG2E, bias, m, lseb[i][:, None])  # [Bq, Bk]
        dv_j = dv_j + mm(a, do_i, 0, 0)  # [Bk, Dv]
        ds, dbias = _dscores(kind, a, mm(do_i, v_j.astype(jnp.float32), 1, 1), delta[i][:, None], dbias)
        g_params, g_q, g_k = pw_vjp(ds)
        g_q = g_q.T  # [F, Bq]
        dparams = jax.tree.map(lambda acc, g: acc + g.astype(jnp.float32), dparams, g_params)
      dfq = jax.lax.dynamic_update_index_in_dim(dfq, dfq[i] + g_q.astype(jnp.float32), i, 0)
      return dfq, dparams, dbias, dfk_j + g_k.astype(jnp.float32), dv_j

    init = (dfq, dparams, dbias, jnp.zeros((plan.bk, f), jnp.float32),
            jnp.zeros((plan.bk, dv), jnp.float32))
    carry = _fori(plan.q_lo(j), plan.q_full(j), functools.partial(q_step, diagonal=True), init)
    plain = functools.partial(q_step, diagonal=False)
    dfq, dparams, dbias, dfk_j, dv_j = _fori(plan.q_full(j), plan.nq, plain, carry)
    return (dfq, dparams, dbias), (dfk_j, dv_j)

  init = (jnp.zeros((plan.nq, f, plan.bq), jnp.float32), zeros_like(params), jnp.zeros((), jnp.float32))
  (dfq, dparams, dbias), (dfk, dvv) = jax.lax.scan(kv_block, init, jnp.arange(plan.nk))
  return (dparams, jnp.swapaxes(dfq, 1, 2).reshape(plan.nq * plan.bq, f),
          dfk.reshape(plan.nk * plan.bk, f), dvv.reshape(plan.nk * plan.bk, dv), dbias)
