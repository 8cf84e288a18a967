"""Ring attention: soft attention for any registered score, the sequence split over a mesh axis.

The path behind ``attention(..., impl="ring")`` (Liu et al. 2023, "Ring Attention with Blockwise
Transformers"; striped layout: Brandon et al. 2023, "Striped Attention"). A ``shard_map`` over the
mesh axis ``SEQ_AXIS`` (P devices) gives device r the queries and keys at global positions
r, r + P, r + 2P, ... (striped). Key/value blocks travel around the ring with ``ppermute``: at
step t device r holds the block of device s = r − t and runs the one-head passes of
``_blocked_passes`` (the same per-block online softmax/sigmoid, any score's ``pairwise``) on it;
the per-step (out, lse) pairs are merged in log2 units:

    softmax: m = max(lse, lse_t);  w = 2^(lse − m), w_t = 2^(lse_t − m)
             out ← (w·out + w_t·out_t) / (w + w_t);  lse ← m + log2(w + w_t)
    sigmoid: out ← out + out_t

Backward (``custom_vjp`` inside the shard_map): the blocks travel the ring again, each with its
dK/dV accumulator, and ``_blocked_passes.backward`` gets the final out and lse, so every step's
weights are the global ones; after P rotations dK/dV are back on their own device. Score
parameters and the sigmoid bias are replicated: the shard_map's transpose sums their per-device
gradients over the ring.
Per device everything is O(L/P) (the passes keep O(block) live), nothing is [L, L].

Causal: striped positions make every step's block nearly triangular (query a of device r sees key
b of device s iff b ≤ a − [s > r]), so every device does the same work at every step. Masks: the
user's mask keeps all key columns on each device (the rows of its queries only) and each step
slices the arriving block's columns; a key-padding mask [.., 1, Lk] is O(Lk) per device. Lengths
that P does not divide are padded (padded keys masked by index, padded queries dropped).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from attnlab import parallel
from attnlab.kernels import _blocked as blocked
from attnlab.kernels import _blocked_passes as passes
from attnlab.kernels._blocked_passes import cdiv, pad_to

Array = jax.Array

SEQ_AXIS = parallel.SEQ_AXIS  # "seq"
KINDS = blocked.KINDS


def make_mesh(devices: Any = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis ``SEQ_AXIS`` over ``devices`` (default: all devices)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (SEQ_AXIS,))


class _StepPlan(passes.Plan):
  """Block geometry of one ring step: device r's n_q local queries (striped: global r + P·a) against
  the n_k keys of device s (global s + P·b). ``off`` = [s > r] shifts the causal diagonal;
  ``k_valid`` (traced) counts the arriving block's real (unpadded) keys."""

  def __init__(self, n_q, n_k, block_q, block_k, causal, off, k_valid):
    super().__init__(n_q, n_k, block_q, block_k, causal)
    self.off, self.k_valid = off, k_valid

  def k_hi(self, i):
    if not self.causal:
      return self.nk
    return jnp.clip(((i + 1) * self.bq - 1 - self.off) // self.bk + 1, 0, self.nk)

  def q_lo(self, j):
    if not self.causal:
      return 0
    return jnp.minimum(self.nq, (j * self.bk + self.off) // self.bq)

  def k_full(self, i):  # every block is masked (the arriving block's valid keys): none is plain
    return 0

  def q_full(self, j):
    return self.nq

  def block_mask(self, mask, i, j, diagonal=True):
    del diagonal
    kidx = j * self.bk + jnp.arange(self.bk)[None, :]  # [1, Bk]
    m = kidx < self.k_valid
    if self.causal:
      m = m & (i * self.bq + jnp.arange(self.bq)[:, None] >= kidx + self.off)  # [Bq, Bk]
    if mask is not None:
      rows, cols = (self.bq if mask.shape[0] > 1 else 1), (self.bk if mask.shape[1] > 1 else 1)
      m = m & jax.lax.dynamic_slice(mask, (i * self.bq if rows > 1 else 0, j * self.bk if cols > 1 else 0),
                                    (rows, cols))
    return m


class _Geometry:
  """Static sizes of one ring call: P devices, n_q / n_k local queries / keys, global Lk."""

  def __init__(self, p, n_q, n_k, lk, block_q, block_k, causal, axis, shift, steps):
    self.p, self.n_q, self.n_k, self.lk, self.causal, self.axis = p, n_q, n_k, lk, causal, axis
    self.block_q, self.block_k = block_q, block_k
    self.shift, self.steps = shift, steps  # the rotation (+1) and P steps; tests mutate them

  def plan(self, r, t):
    """The step plan of device r at step t (source s = r − t) and s."""
    s = (r - t) % self.p
    k_valid = jnp.clip((self.lk - s + self.p - 1) // self.p, 0, self.n_k)  # keys s + P·b < Lk
    off = (s > r).astype(jnp.int32) if self.causal else 0
    return _StepPlan(self.n_q, self.n_k, self.block_q, self.block_k, self.causal, off, k_valid), s

  def rotate(self, *xs):
    perm = [(i, (i + self.shift) % self.p) for i in range(self.p)]
    return tuple(jax.lax.ppermute(x, self.axis, perm) for x in xs)


def _local(score: Any, kind: str, geo: _Geometry, heads: blocked._Heads):
  """The per-device custom_vjp (params, q, k, v, mask, bias) -> out [B, n_q, Hkv, G, Dv]."""

  def project(p, q1, k1):
    return score.project_q(p, q1), score.project_k(p, k1)  # [n_q, F], [n_k, F]

  def padded(plan, fq, fk, v1, m):
    if m is not None:
      m = pad_to(m, 0, plan.nq * plan.bq, False) if m.shape[0] > 1 else m
      m = pad_to(m, 1, plan.nk * plan.bk, False) if m.shape[1] > 1 else m
    return (pad_to(fq, 0, plan.nq * plan.bq), pad_to(fk, 0, plan.nk * plan.bk),
            pad_to(v1, 0, plan.nk * plan.bk), m)

  def columns(mask, s):  # the arriving block's key columns of the local mask rows
    if mask is None or mask.shape[4] == 1:
      return mask
    return jax.lax.dynamic_slice_in_dim(mask, s * geo.n_k, geo.n_k, 4)

  def forward(params, q, k, v, mask, bias):  # head-major q [B, Hkv, G, n_q, D], k/v [B, Hkv, n_k, D]
    r = jax.lax.axis_index(geo.axis)

    def step(t, carry):
      out, lse, k_t, v_t = carry
      k_next, v_next = geo.rotate(k_t, v_t)  # independent of this step's work: may overlap it
      plan, s = geo.plan(r, t)
      m_t = columns(mask, s)

      def head(h, acc):
        out, lse = acc
        p, q1, k1, v1, m = heads.take(h, params, q, k_t, v_t, m_t)
        o1, l1 = passes.forward(score.pairwise, kind, plan, p, *padded(plan, *project(p, q1, k1), v1, m),
                                bias)
        o1, l1 = o1[:geo.n_q], l1[:geo.n_q]
        b, kv, g = heads.index(h)
        o0, l0 = out[b, kv, g], lse[h]
        if kind == "softmax":
          mx = jnp.maximum(l0, l1)
          w0, w1 = jnp.exp2(l0 - mx), jnp.exp2(l1 - mx)
          o1 = (w0[:, None] * o0 + w1[:, None] * o1) / (w0 + w1)[:, None]
          l1 = mx + jnp.log2(w0 + w1)
        else:
          o1, l1 = o0 + o1, l0
        out = jax.lax.dynamic_update_slice(out, o1[None, None, None], (b, kv, g, 0, 0))
        return out, jax.lax.dynamic_update_index_in_dim(lse, l1, h, 0)

      out, lse = jax.lax.fori_loop(0, heads.n, head, (out, lse))
      return out, lse, k_next, v_next

    init = (jnp.zeros(q.shape[:-1] + v.shape[-1:], jnp.float32),  # [B, Hkv, G, n_q, Dv]
            jnp.full((heads.n, geo.n_q), passes._NEG, jnp.float32), k, v)  # pylint: disable=protected-access
    out, lse = jax.lax.fori_loop(0, geo.steps, step, init)[:2]
    return out.astype(q.dtype), lse

  def backward(res, dout):  # head-major, as forward
    params, q, k, v, mask, bias, out, lse = res
    r = jax.lax.axis_index(geo.axis)
    f32 = lambda x: jnp.zeros(x.shape, jnp.float32)

    def step(t, carry):
      dparams, dq, dbias, k_t, v_t, dk_t, dv_t = carry
      plan, s = geo.plan(r, t)
      m_t = columns(mask, s)
      lq_p = plan.nq * plan.bq

      def head(h, acc):
        dparams, dq, dk, dv, dbias = acc
        p, q1, k1, v1, m = heads.take(h, params, q, k_t, v_t, m_t)
        b, kv, g = heads.index(h)
        (fq, fk), proj_vjp = jax.vjp(project, p, q1, k1)
        fq_p, fk_p, v_p, m = padded(plan, fq, fk, v1, m)
        dpp, dfq, dfk, dv1, db = passes.backward(
            score.pairwise, kind, plan, p, fq_p, fk_p, v_p, m, bias, pad_to(out[b, kv, g], 0, lq_p),
            pad_to(lse[h], 0, lq_p), pad_to(dout[b, kv, g], 0, lq_p))
        dpq, dq1, dk1 = proj_vjp((dfq[:geo.n_q].astype(fq.dtype), dfk[:geo.n_k].astype(fk.dtype)))
        dp1 = jax.tree.map(lambda a, c: a + c.astype(jnp.float32), dpp, dpq)
        if heads.per_head:
          dparams = jax.tree.map(lambda acc, x: acc.at[kv, g].add(x), dparams, dp1)
        else:
          dparams = jax.tree.map(jnp.add, dparams, dp1)
        dq = jax.lax.dynamic_update_slice(
            dq, (dq[b, kv, g] + dq1.astype(jnp.float32))[None, None, None], (b, kv, g, 0, 0))
        add_kv = lambda acc, x: jax.lax.dynamic_update_slice(
            acc, (acc[b, kv] + x.astype(jnp.float32))[None, None], (b, kv, 0, 0))
        return dparams, dq, add_kv(dk, dk1), add_kv(dv, dv1[:geo.n_k]), dbias + db

      dparams, dq, dk_t, dv_t, dbias = jax.lax.fori_loop(
          0, heads.n, head, (dparams, dq, dk_t, dv_t, dbias))
      return (dparams, dq, dbias) + geo.rotate(k_t, v_t, dk_t, dv_t)  # dK/dV travel with K/V

    init = (jax.tree.map(f32, params), f32(q), jnp.zeros((), jnp.float32), k, v, f32(k), f32(v))
    dparams, dq, dbias, _, _, dk, dv = jax.lax.fori_loop(0, geo.steps, step, init)
    cast = lambda gr, x: gr.astype(x.dtype)
    return jax.tree.map(cast, dparams, params), cast(dq, q), cast(dk, k), cast(dv, v), cast(dbias, bias)

  return blocked.head_major_vjp(forward, backward)


def _stripe(x: Array, axis: int, p: int) -> Array:
  """Reorders positions so that device r's contiguous shard holds r, r + P, r + 2P, ..."""
  n = x.shape[axis] // p
  y = x.reshape(x.shape[:axis] + (n, p) + x.shape[axis + 1:])
  return jnp.swapaxes(y, axis, axis + 1).reshape(x.shape)


def _unstripe(x: Array, axis: int, p: int) -> Array:
  n = x.shape[axis] // p
  y = x.reshape(x.shape[:axis] + (p, n) + x.shape[axis + 1:])
  return jnp.swapaxes(y, axis, axis + 1).reshape(x.shape)


def seq_mesh(mesh: Any = None, axis: str = SEQ_AXIS) -> Any:
  """``mesh`` or the one set by ``jax.set_mesh``; a ValueError when it has no axis ``axis``."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  names = tuple(getattr(mesh, "axis_names", ()) or ())
  if axis not in names:
    raise ValueError(f"impl='ring' needs a mesh with a {axis!r} axis (the sequence is split over it), "
                     f"got axes {names}: call under `with jax.set_mesh(attnlab.kernels.ring.make_mesh()):`")
  return mesh


def attend_ring(q: Array, k: Array, v: Array, mask: Array | None, *, score: Any, kind: str,
                params: Any = None, per_head: bool = False, bias: Array | None = None,
                causal: bool = False, block_q: int | None = None, block_k: int | None = None,
                mesh: Any = None, axis: str = SEQ_AXIS, _shift: int = 1, _steps: int | None = None) -> Array:
  """Soft attention with the sequence split over mesh axis ``axis`` (ring of P devices).

  Args: as ``blocked.attend_blocked`` (q [B, Lq, Hkv, G, D], k [B, Lk, Hkv, D], v [B, Lk, Hkv, Dv],
    mask bool [B|1, Hkv|1, G|1, Lq|1, Lk|1] or None; block sizes are per device), plus ``mesh``
    (default: the one set by ``jax.set_mesh``) with an axis ``axis``. ``_shift`` and ``_steps``
    change the rotation and the number of ring steps (tests check that a wrong ring is caught).
  Returns:
    z [B, Lq, Hkv, G, Dv] in q's dtype.
  """
  if kind not in KINDS:
    raise ValueError(f"attend_ring: kind must be one of {KINDS}, got {kind!r}")
  mesh = seq_mesh(mesh, axis)
  p = mesh.shape[axis]
  b, lq, hkv, g, _ = q.shape
  lk = k.shape[1]
  n_q, n_k = cdiv(lq, p), cdiv(lk, p)
  if block_q is None or block_k is None:
    p0 = jax.tree.map(lambda x: x[0, 0], params) if per_head else params
    fq0 = jax.eval_shape(score.project_q, p0, jax.ShapeDtypeStruct((n_q, q.shape[-1]), q.dtype))
    dq, dk = blocked.default_block(score.pairwise, p0, fq0.shape[-1], fq0.dtype, n_k)
    block_q, block_k = block_q or dq, block_k or dk
  geo = _Geometry(p, n_q, n_k, lk, block_q, block_k, causal, axis, _shift, p if _steps is None else _steps)
  bias = jnp.asarray(-math.log(lk) if bias is None else bias, jnp.float32)
  q, k, v = pad_to(q, 1, p * n_q), pad_to(k, 1, p * n_k), pad_to(v, 1, p * n_k)
  q, k, v = _stripe(q, 1, p), _stripe(k, 1, p), _stripe(v, 1, p)
  seq = P(None, axis)
  specs = [P(), P(), seq, seq, seq]
  args = [params, bias, q, k, v]
  if mask is not None:
    rows = mask.shape[3] > 1
    if rows:
      mask = _stripe(pad_to(mask, 3, p * n_q, False), 3, p)
    if mask.shape[4] > 1:
      mask = _stripe(pad_to(mask, 4, p * n_k, False), 4, p)
    specs.append(P(None, None, None, axis if rows else None, None))
    args.append(mask)
  core = _local(score, kind, geo, blocked._Heads(b, hkv, g, per_head))  # pylint: disable=protected-access

  def body(params, bias, q, k, v, *rest):
    return core(params, q, k, v, rest[0] if rest else None, bias)

  out = jax.shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=seq, axis_names={axis},
                      check_vma=False)(*args)  # manual over the ring axis only: others stay automatic
  return _unstripe(out, 1, p)[:, :lq]
