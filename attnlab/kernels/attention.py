"""The public attention entry: one-head kernel, batched over heads and batch in one place.

Layout follows ``jax.nn.dot_product_attention``:

    query [B, Lq, H, D], key [B, Lk, Hkv, D], value [B, Lk, Hkv, Dv] -> output [B, Lq, H, Dv]

with Hkv any divisor of H (grouped-query / multi-query attention: query head h reads key/value
head h // (H // Hkv)).

Two implementations of the one-head kernel, chosen by ``impl``:

* ``"dense"``: scores [Lq, Lk] → weights → target (every normalizer and target; returns weights).
* ``"blocked"``: ``blocked.attend_blocked``, online softmax/sigmoid over key blocks with a
  recomputing custom_vjp: O(Lq + Lk) memory, never the [Lq, Lk] scores. Only for the ``soft``
  target, the ``softmax`` and ``sigmoid`` normalizers (scalar bias), and without
  ``return_weights`` (the weights are exactly the [Lq, Lk] matrix it avoids).
* ``"ring"``: ``ring.attend_ring``, the blocked passes with the sequence split over the mesh axis
  ``ring.SEQ_AXIS`` of the mesh set by ``jax.set_mesh`` (key/value blocks pass around the ring of
  devices); same conditions as blocked.
* ``"auto"`` (default): ``dispatch.choose_impl(jax.default_backend(), ...)``: on an NVIDIA GPU,
  scaled-dot softmax soft attention in half precision goes to cuDNN's fused kernel (through
  ``jax.nn.dot_product_attention``);
  otherwise blocked when it applies and Lq·Lk ≥ ``AUTO_BLOCKED_MIN_PAIRS``, else dense.

Dense maps the one-head kernel over (batch, kv head, group) with ``jax.vmap`` (``_batched``);
blocked loops over the same slices inside its own custom_vjp (``blocked.py``: one head at a time,
read from and written to this layout in place).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from attnlab.kernels import _dtypes, _params
from attnlab.kernels import _blocked
from attnlab.kernels import dispatch as _dispatch
from attnlab.kernels import normalizers as _normalizers
from attnlab.kernels import ring as _ring
from attnlab.kernels import scores as _scores
from attnlab.kernels import targets as _targets

Array = jax.Array

IMPLS = ("auto", "dense", "blocked", "ring")
AUTO_BLOCKED_MIN_PAIRS = _dispatch.AUTO_BLOCKED_MIN_PAIRS


def attend_one_head(q, k, v, mask, *, score, normalizer, target, params=None, rng=None,
                    deterministic=False, normalizer_kwargs=None, target_kwargs=None):
  """Attention for ONE head, no batch axis.

  Args:
    q: [Lq, D] queries.  k: [Lk, D] keys.  v: [Lk, Dv] values.
    mask: [Lq, Lk] bool (True = may attend).
    score, normalizer, target: a Score, Normalizer and Target (see their modules).
  Returns:
    (z [Lq, Dv], alpha [Lq, Lk], aux dict of [Lq] arrays from the target). The scores are
    normalised in float32 at least and alpha is returned in v's dtype (as jax.nn does).
  """
  s = _dtypes.upcast(score(params, q, k))  # [Lq, Lk]
  alpha = normalizer.fn(s, mask, **(normalizer_kwargs or {})).astype(v.dtype)  # [Lq, Lk]
  z, aux = target.fn(alpha, v, rng=rng, deterministic=deterministic, **(target_kwargs or {}))
  return z, alpha, aux


def _check_array(name, x, ndim, dtype=None):
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"attention: {name} must be an array, got {type(x).__name__}")
  if x.ndim != ndim:
    raise ValueError(f"attention: {name} must have rank {ndim} ([batch, len, heads, dim]), "
                     f"got shape {tuple(x.shape)}")
  if dtype is not None and x.dtype != dtype:
    raise ValueError(f"attention: {name} has dtype {x.dtype}, expected {dtype} (the query's dtype)")


def _check_inputs(query, key, value):
  _check_array("query", query, 4)
  if not jnp.issubdtype(query.dtype, jnp.floating):
    raise ValueError(f"attention: query must be floating point, got dtype {query.dtype}")
  _check_array("key", key, 4, query.dtype)
  _check_array("value", value, 4, query.dtype)
  b, lq, h, d = query.shape
  if key.shape[0] != b or key.shape[3] != d:
    raise ValueError(f"attention: key must have shape [{b}, kv_len, kv_heads, {d}] to match query "
                     f"{tuple(query.shape)}, got {tuple(key.shape)}")
  if value.shape[:3] != key.shape[:3]:
    raise ValueError(f"attention: value must have shape [{', '.join(map(str, key.shape[:3]))}, v_dim] "
                     f"to match key {tuple(key.shape)}, got {tuple(value.shape)}")
  if h % key.shape[2]:
    raise ValueError(f"attention: kv_heads ({key.shape[2]}) must divide heads ({h})")


def _mask4(mask, causal, b, h, lq, lk, broadcast=True):
  """The combined mask as a [B or 1, H or 1, Lq, Lk] bool array (None if there is none).

  With ``broadcast=False`` (blocked path) size-1 query/key dims stay size 1 and ``causal`` is left
  to the kernel (it masks by block index).
  """
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
      raise ValueError(f"attention: mask must be boolean (True = may attend), got dtype {mask.dtype}")
    if mask.ndim > 4:
      raise ValueError(f"attention: mask must be broadcastable to [{b}, {h}, {lq}, {lk}], "
                       f"got shape {tuple(mask.shape)}")
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    try:
      jnp.broadcast_shapes(mask.shape, (b, h, lq, lk))
    except ValueError:
      raise ValueError(f"attention: mask must be broadcastable to [{b}, {h}, {lq}, {lk}], "
                       f"got shape {tuple(mask.shape)}") from None
    if broadcast:
      mask = jnp.broadcast_to(mask, (mask.shape[0], mask.shape[1], lq, lk))
  if causal and broadcast:
    tri = jnp.tril(jnp.ones((lq, lk), jnp.bool_))[None, None]  # query i sees keys j <= i
    mask = tri if mask is None else mask & tri
  return mask


def _batched(kernel, q, k, v, mask, params, rngs, per_head):
  """The one place where the dense one-head kernel is vmapped over heads and batch.

  q [B, Lq, Hkv, G, D], k [B, Lk, Hkv, D], v [B, Lk, Hkv, Dv], mask [B|1, Hkv|1, G|1, Lq, Lk] or None,
  params leaves [Hkv, G, ...] if per_head, rngs [B, Hkv, G] keys or None.
  """
  m_b, m_kv, m_g = (None if mask is None else (0 if n > 1 else None) for n in
                    (mask.shape[:3] if mask is not None else (1, 1, 1)))
  squeeze = lambda m, ax: m if m is None or ax == 0 else m.squeeze(0)
  r = None if rngs is None else 0
  p = 0 if per_head else None

  def per_group(q_g, k_, v_, mask_g, params_g, rngs_g):  # q_g [Lq, G, D]
    f = lambda q1, m1, p1, r1: kernel(q1, k_, v_, m1, p1, r1)
    return jax.vmap(f, in_axes=(1, m_g, p, r), out_axes=(1, 0, 0))(
        q_g, squeeze(mask_g, m_g), params_g, rngs_g)

  def per_example(q_b, k_b, v_b, mask_b, rngs_b):  # q_b [Lq, Hkv, G, D]
    return jax.vmap(per_group, in_axes=(1, 1, 1, m_kv, p, r), out_axes=(1, 0, 0))(
        q_b, k_b, v_b, squeeze(mask_b, m_kv), params, rngs_b)

  return jax.vmap(per_example, in_axes=(0, 0, 0, m_b, r))(q, k, v, squeeze(mask, m_b), rngs)


def _check_block_size(block_size):
  if block_size is None:
    return None, None  # blocked.default_block
  bs = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
  if len(bs) != 2 or not all(isinstance(x, int) and x > 0 for x in bs):
    raise ValueError(f"attention: block_size must be a positive int or (block_q, block_k), "
                     f"got {block_size!r}")
  return bs


@functools.partial(jax.jit, static_argnames=(
    "score", "normalizer", "target", "causal", "return_weights", "return_aux", "deterministic",
    "impl", "block_size"))
def attention(query: Array, key: Array, value: Array, *, score: str = "scaled_dot",
              normalizer: str = "softmax", target: str | _targets.Target = "soft", mask: Array | None = None,
              causal: bool = False, params: Any = None, rng: Array | None = None,
              return_weights: bool = False, deterministic: bool = False,
              normalizer_kwargs: dict | None = None, target_kwargs: dict | None = None,
              return_aux: bool = False, impl: str = "auto",
              block_size: int | tuple[int, int] | None = None):
  """Attention of one category, chosen by name, in ``jax.nn.dot_product_attention``'s layout.

  Args:
    query: [B, Lq, H, D].
    key: [B, Lk, Hkv, D], Hkv dividing H (GQA/MQA).
    value: [B, Lk, Hkv, Dv].
    score: registered score name (``attnlab.registry.names("score")``).
    normalizer: registered normalizer name (softmax, sparsemax, entmax15, sigmoid, ...).
    target: registered target name (soft, hard, hard_st, ...), or a ``Target`` (e.g.
      ``with_weight_dropout("soft")``).
    mask: bool, broadcastable to [B, H, Lq, Lk]; True = may attend.
    causal: also mask keys j > i.
    params: the score's parameters (``init_params``), shared or with a leading [H] axis; None
      for parameter-free scores.
    rng: PRNG key; required by stochastic targets unless ``deterministic``.
    return_weights: also return the weights α [B, H, Lq, Lk].
    deterministic: stochastic targets take the argmax of α (evaluation).
    normalizer_kwargs: options of the normalizer, e.g. ``{"bias": b}`` for sigmoid.
    target_kwargs: options of the target, e.g. ``{"temperature": t}`` for hard_st.
    return_aux: also return the target's aux dict of [B, H, Lq] arrays (hard: index, log_prob).
    impl: "auto" (default), "dense", "blocked" or "ring" (see the module docstring). "blocked"/"ring" raise a
      ValueError where it does not apply (sparsemax/entmax15, hard/hard_st, return_weights);
      "auto" then uses dense.
    block_size: (block_q, block_k) or one int for the blocked path; default
      ``blocked.default_block`` ((1024, 512) for dot-product scores, (256, 128) for additive; one
      key block when Lk is at most the query block; causal: square (512, 512), (128, 128)).

  Returns:
    output [B, Lq, H, Dv]; ``(output, weights)`` with return_weights; ``(output, [weights,] aux)``
    with return_aux. Rows with nothing to attend to give zero output and zero weights. Output and
    weights have the inputs' dtype; float16/bfloat16 scores are normalised in float32.
  """
  _check_inputs(query, key, value)
  score_fn = _scores.get_score(score)
  norm = _normalizers.get_normalizer(normalizer)
  tgt = _targets.resolve(target)
  b, lq, h, d = query.shape
  lk, hkv = key.shape[1], key.shape[2]
  g = h // hkv
  if tgt.stochastic and not deterministic and rng is None:
    raise ValueError(f"attention: target {target!r} samples and needs rng=jax.random.key(...) "
                     "(or deterministic=True for the argmax)")
  if impl not in IMPLS:
    raise ValueError(f"attention: impl must be one of {IMPLS}, got {impl!r}")
  block_q, block_k = _check_block_size(block_size)
  kind, why_not = _dispatch.blocked_kind(normalizer, target, return_weights=return_weights,
                                         normalizer_kwargs=normalizer_kwargs)
  if impl in ("blocked", "ring") and kind is None:
    raise ValueError(f"attention: impl={impl!r} does not apply: {why_not}. Use impl='dense' or "
                     f"impl='auto' (valid impl values: {IMPLS})")
  if impl == "ring":
    _ring.seq_mesh()  # a clear error before any work when there is no sequence mesh
  per_head = _params.per_head("attention", score, score_fn.init, params, d, h, "init_params")
  if impl == "auto":
    impl = _dispatch.choose_impl(jax.default_backend(), score, normalizer, target,
                                 return_weights=return_weights, normalizer_kwargs=normalizer_kwargs,
                                 lq=lq, lk=lk, d=d, dv=value.shape[-1], dtype=str(query.dtype))
  if impl == "dpa":
    out = _dispatch.dot_product_attention(query, key, value, _mask4(mask, causal, b, h, lq, lk, False),
                                          causal)
    return (out, {}) if return_aux else out
  use_blocked = impl in ("blocked", "ring")
  mask4 = _mask4(mask, causal, b, h, lq, lk, broadcast=not use_blocked)
  if mask4 is not None:
    mb, mh = mask4.shape[:2]
    mask4 = mask4.reshape((mb, hkv if mh > 1 else 1, g if mh > 1 else 1) + mask4.shape[2:])
  if per_head:
    params = jax.tree.map(lambda x: x.reshape((hkv, g) + x.shape[1:]), params)
  rngs = None
  if tgt.stochastic and not deterministic:
    rngs = jax.random.split(rng, b * h).reshape((b, hkv, g) + jnp.shape(rng))

  def kernel(q1, k1, v1, m1, p1, r1):
    if m1 is None:
      m1 = jnp.ones((q1.shape[0], k1.shape[0]), jnp.bool_)
    return attend_one_head(q1, k1, v1, m1, score=score_fn, normalizer=norm, target=tgt, params=p1,
                           rng=r1, deterministic=deterministic, normalizer_kwargs=normalizer_kwargs,
                           target_kwargs=target_kwargs)

  q5 = query.reshape(b, lq, hkv, g, d)  # [B, Lq, Hkv, G, D]
  if use_blocked:
    bias = (normalizer_kwargs or {}).get("bias")
    attend = _ring.attend_ring if impl == "ring" else _blocked.attend_blocked
    out = attend(q5, key, value, mask4, score=score_fn, kind=kind, params=params, per_head=per_head,
                 causal=causal, block_q=block_q, block_k=block_k,
                 bias=None if bias is None else jnp.reshape(bias, ()))
    alpha, aux = None, {}
  else:
    out, alpha, aux = _batched(kernel, q5, key, value, mask4, params, rngs, per_head)
  out = out.reshape(b, lq, h, value.shape[-1])  # [B, Lq, H, Dv]
  result = (out,)
  if return_weights:
    result += (alpha.reshape(b, h, lq, lk),)  # [B, H, Lq, Lk]
  if return_aux:
    result += (jax.tree.map(lambda a: a.reshape(b, h, lq), aux),)  # [B, H, Lq]
  return result[0] if len(result) == 1 else result
