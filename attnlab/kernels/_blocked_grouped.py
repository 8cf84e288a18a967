"""Blocked attention with all heads of one example in each block product (the speed path).

The one-head passes of ``_blocked_passes`` (the reference, as ``_blocked._multihead`` loops them
head by head) are ``jax.vmap``-ed over an example's kv heads and, inside, their query groups (keys
and values shared, GQA), so each block's products are one ``dot_general`` over every head of the
example: enough work per call for XLA:CPU to spread a product over its threads. ONE custom_vjp
loops over the examples; its residuals are the inputs, the output and the per-row lse (as in
``_multihead``). An example's key/value gradients come from that example alone, so they are
written, not accumulated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.kernels import _blocked_passes as passes
from attnlab.kernels._blocked_passes import Plan, pad_to


def _axis(m, at=0):
  """vmap axis of a mask's leading head axis: 0 if it has one per head, None if shared (size 1)."""
  return None if m is None or m.shape[at] == 1 else 0


def _squeeze(m):
  return m if m is None or m.shape[0] > 1 else m[0]


def multihead(score: Any, kind: str, plan: Plan, b: int, per_head: bool):
  """The custom_vjp (params, q [B, Lq, Hkv, G, D], k, v [B, Lk, Hkv, D|Dv], mask [B|1, Hkv|1, G|1,
  Lq|1, Lk|1] or None, bias) -> out [B, Lq, Hkv, G, Dv]."""
  lq, lk = plan.lq, plan.lk
  lq_p, lk_p = plan.nq * plan.bq, plan.nk * plan.bk
  pa = 0 if per_head else None
  f32 = jnp.float32

  def project(p, q1, k1):
    return score.project_q(p, q1), score.project_k(p, k1)  # [Lq, F], [Lk, F]

  def one_fwd(p, q1, k1, v1, m, bias):  # the one-head forward: out [Lq_p, Dv], lse [Lq_p]
    fq, fk = project(p, q1, k1)
    return passes.forward(score.pairwise, kind, plan, p, pad_to(fq, 0, lq_p), pad_to(fk, 0, lk_p),
                          pad_to(v1, 0, lk_p), m, bias)

  def one_bwd(p, q1, k1, v1, m, bias, o1, l1, do1):
    (fq, fk), proj_vjp = jax.vjp(project, p, q1, k1)
    dpp, dfq, dfk, dv1, db = passes.backward(
        score.pairwise, kind, plan, p, pad_to(fq, 0, lq_p), pad_to(fk, 0, lk_p), pad_to(v1, 0, lk_p), m,
        bias, pad_to(o1, 0, lq_p), l1, pad_to(do1, 0, lq_p))
    dpq, dq1, dk1 = proj_vjp((dfq[:lq].astype(fq.dtype), dfk[:lk].astype(fk.dtype)))
    dp1 = jax.tree.map(lambda a, c: a.astype(f32) + c.astype(f32), dpp, dpq)
    return dp1, dq1, dk1.astype(f32), dv1[:lk], db

  def example_fwd(params, qb, kb, vb, mb, bias):
    """qb [Lq, Hkv, G, D], kb/vb [Lk, Hkv, D|Dv], mb [Hkv|1, G|1, Lq|1, Lk|1] or None ->
    out [Lq_p, Hkv, G, Dv], lse [Hkv, G, Lq_p]."""
    def group(p, q_g, k1, v1, m_g):  # one kv head and its G query heads
      return jax.vmap(one_fwd, in_axes=(pa, 1, None, None, _axis(m_g), None), out_axes=(1, 0))(
          p, q_g, k1, v1, _squeeze(m_g), bias)
    return jax.vmap(group, in_axes=(pa, 1, 1, 1, _axis(mb)), out_axes=(1, 0))(params, qb, kb, vb,
                                                                              _squeeze(mb))

  def example_bwd(params, qb, kb, vb, mb, bias, ob, lb, dob):
    """-> dparams (per head [Hkv, G, ...] or summed), dq [Lq, Hkv, G, D], dk/dv [Lk, Hkv, D|Dv], dbias."""
    def group(p, q_g, k1, v1, m_g, o_g, l_g, do_g):
      dp, dq, dk, dv, db = jax.vmap(one_bwd, in_axes=(pa, 1, None, None, _axis(m_g), None, 1, 0, 1),
                                    out_axes=(0, 1, 0, 0, 0))(p, q_g, k1, v1, _squeeze(m_g), bias, o_g,
                                                              l_g, do_g)
      dp = dp if per_head else jax.tree.map(lambda x: jnp.sum(x, 0), dp)
      return dp, dq, jnp.sum(dk, 0), jnp.sum(dv, 0), jnp.sum(db)
    dp, dq, dk, dv, db = jax.vmap(group, in_axes=(pa, 1, 1, 1, _axis(mb), 1, 0, 1),
                                  out_axes=(0, 1, 1, 1, 0))(params, qb, kb, vb, _squeeze(mb), ob, lb, dob)
    dp = dp if per_head else jax.tree.map(lambda x: jnp.sum(x, 0), dp)
    return dp, dq, dk, dv, jnp.sum(db)

  pick = lambda x, i: None if x is None else x[i if x.shape[0] > 1 else 0]

  def forward(params, q, k, v, mask, bias):
    def step(i, carry):
      out, lse = carry
      o, lse1 = example_fwd(params, q[i], k[i], v[i], pick(mask, i), bias)
      return (jax.lax.dynamic_update_index_in_dim(out, o[:lq].astype(out.dtype), i, 0),
              jax.lax.dynamic_update_index_in_dim(lse, lse1, i, 0))

    init = (jnp.zeros(q.shape[:-1] + v.shape[-1:], q.dtype),  # [B, Lq, Hkv, G, Dv]
            jnp.zeros(q.shape[:1] + q.shape[2:4] + (lq_p,), f32))  # [B, Hkv, G, Lq_p]
    return jax.lax.fori_loop(0, b, step, init)

  @jax.custom_vjp
  def core(params, q, k, v, mask, bias):
    return forward(params, q, k, v, mask, bias)[0]

  def fwd(params, q, k, v, mask, bias):
    out, lse = forward(params, q, k, v, mask, bias)
    return out, (params, q, k, v, mask, bias, out, lse)

  def bwd(res, dout):
    params, q, k, v, mask, bias, out, lse = res

    def step(i, carry):
      dparams, dq, dk, dv, dbias = carry
      dp, dq1, dk1, dv1, db = example_bwd(params, q[i], k[i], v[i], pick(mask, i), bias, out[i], lse[i],
                                          dout[i])
      put = lambda acc, x: jax.lax.dynamic_update_index_in_dim(acc, x.astype(acc.dtype), i, 0)
      return (jax.tree.map(jnp.add, dparams, dp), put(dq, dq1), put(dk, dk1), put(dv, dv1), dbias + db)

    init = (jax.tree.map(lambda x: jnp.zeros(x.shape, f32), params), jnp.zeros_like(q), jnp.zeros_like(k),
            jnp.zeros_like(v), jnp.zeros((), f32))
    dparams, dq, dk, dv, dbias = jax.lax.fori_loop(0, b, step, init)
    return (jax.tree.map(lambda gr, x: gr.astype(x.dtype), dparams, params), dq, dk, dv, None,
            dbias.astype(bias.dtype))

  core.defvjp(fwd, bwd)
  return core
