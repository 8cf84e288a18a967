"""Multi-head attention layer: a drop-in for ``flax.nnx.MultiHeadAttention`` with attention categories.

With the defaults (``score="scaled_dot"``, ``normalizer="softmax"``, ``target="soft"``,
``head_mode="split"``, ``head_merge="concat"``) the layer has flax's parameter names and shapes,

    query/key/value: LinearGeneral, kernel [in, H(kv), D], bias [H(kv), D]
    out:             LinearGeneral, kernel [H, D, out],    bias [out]

so ``nnx.update(ours, nnx.state(flax_mha, nnx.Param))`` reproduces flax's outputs. The attention
itself is computed by ``attnlab.kernels.attention`` only. The category comes in one of two forms:

* short form, keywords on top of flax's: ``MultiHeadAttention(4, 32, score="additive",
  normalizer="entmax15", rngs=rngs)`` (also head_mode, head_merge, num_kv_heads, dropout_rate,
  score_kwargs, normalizer_kwargs, target_kwargs, impl);
* spec form (models use it): ``MultiHeadAttention(spec.num_heads, 32, attention=spec, rngs=rngs)``
  with an ``attnlab.AttentionSpec``; ``num_heads`` must equal ``spec.num_heads`` and the category
  keywords stay unset. The layer keeps the very spec object.

Either way ``layer.attention`` is the spec, passed to the kernel unchanged, and ``layer.score`` etc.
read from it. Score parameters, if any, are per head: ``score_params`` holds
``kernels.init_params(score, rng, D, num_heads=H, **score_kwargs)`` as nnx.Params (leading [H]).
``head_mode``: ``"split"`` (Vaswani et al.: project to qkv_features, split into H heads of
D = qkv_features / H) or ``"copy"`` (GAT-style: every head projects the full input with its own
weights, D = qkv_features). ``head_merge``: ``"concat"`` (out kernel [H, D, out]) or ``"mean"``
(heads averaged, out kernel [D, out]). ``num_kv_heads``: GQA / MQA (query head h reads kv head
h // (H / H_kv)).

Randomness: dropout on the attention weights draws from the ``dropout`` rng stream, hard-attention
sampling (stochastic targets) from the ``attention`` stream; both only when not deterministic.
Outputs: ``layer(x)`` -> [..., Lq, out]; with ``return_weights=True`` also the (pre-dropout)
weights [..., H, Lq, Lk]; with ``return_aux=True`` also the target's aux dict of [..., H, Lq]
arrays (hard target: ``index`` and ``log_prob`` for REINFORCE). ``sow_weights=True`` sows the
weights into ``nnx.Intermediate`` as ``attention_weights`` (like flax).

Differences from flax: a query row whose mask excludes every key gets zero output weights (flax
gives uniform weights); attention-weight dropout masks are drawn independently per example and
head (``broadcast_dropout`` is accepted for signature compatibility).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from
from flax.nnx.nn import initializers
from flax.nnx.nn.linear import LinearGeneral, default_kernel_init

from attnlab import kernels, validate
from attnlab.attention_spec import AttentionSpec, SpecError
from attnlab.modules import _spec_call

Array = jax.Array
_NAME = "MultiHeadAttention"
# The short form's category keywords: with attention= they must keep their defaults.
_CATEGORY = ("num_kv_heads", "dropout_rate", "score", "normalizer", "target", "head_mode", "head_merge",
             "score_kwargs", "normalizer_kwargs", "target_kwargs", "impl")


class MultiHeadAttention(nnx.Module):
  """Multi-head attention whose score, normaliser, target and head handling are configuration."""

  def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
               out_features: int | None = None, num_kv_heads: int | None = None,
               in_kv_features: int | None = None, *, dtype: Any = None,
               param_dtype: Any = jnp.float32, broadcast_dropout: bool = True,
               dropout_rate: float = 0.0, deterministic: bool | None = None, precision: Any = None,
               kernel_init: Any = default_kernel_init, out_kernel_init: Any = None,
               bias_init: Any = initializers.zeros_init(), out_bias_init: Any = None,
               use_bias: bool = True, decode: bool | None = None, normalize_qk: bool = False,
               rngs: nnx.Rngs, keep_rngs: bool = True, score: str = "scaled_dot",
               normalizer: str = "softmax", target: str = "soft", head_mode: str = "split",
               head_merge: str = "concat", score_kwargs: dict | None = None,
               normalizer_kwargs: dict | None = None, target_kwargs: dict | None = None,
               impl: str = "auto", attention: AttentionSpec | None = None):
    if attention is None:
      validate.positive_int(_NAME, "num_heads", num_heads)
      validate.rate(_NAME, "dropout_rate", dropout_rate)
      try:
        attention = AttentionSpec(
            score=score, normalizer=normalizer, target=target, head_mode=head_mode,
            head_merge=head_merge, num_heads=num_heads, num_kv_heads=num_kv_heads,
            score_kwargs=score_kwargs or {}, normalizer_kwargs=normalizer_kwargs or {},
            target_kwargs=target_kwargs or {}, dropout=dropout_rate, impl=impl)
      except SpecError as e:
        raise e.named(f"{_NAME}: ") from None
    else:
      _check_spec_form(attention, num_heads, locals())
    self.attention = attention
    self.in_features = in_features
    self.qkv_features = qkv_features if qkv_features is not None else in_features
    self.out_features = out_features if out_features is not None else in_features
    self.in_kv_features = in_kv_features if in_kv_features is not None else in_features
    self.stochastic_target = kernels.get_target(attention.target).stochastic
    if self.head_mode == "split":
      validate.divides(_NAME, "num_heads", self.num_heads, "qkv_features", self.qkv_features)
      self.head_dim = self.qkv_features // self.num_heads
    else:
      self.head_dim = self.qkv_features
    self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
    self.broadcast_dropout = broadcast_dropout
    self.deterministic, self.decode = deterministic, decode
    self.use_bias, self.normalize_qk = use_bias, normalize_qk

    dense = lambda fin, fout, **kw: LinearGeneral(
        fin, fout, dtype=dtype, param_dtype=param_dtype, kernel_init=kw.get("k", kernel_init),
        bias_init=kw.get("b", bias_init), use_bias=use_bias, precision=precision,
        axis=kw.get("axis", -1), rngs=rngs)
    self.query = dense(self.in_features, (self.num_heads, self.head_dim))
    self.key = dense(self.in_kv_features, (self.num_kv_heads, self.head_dim))
    self.value = dense(self.in_kv_features, (self.num_kv_heads, self.head_dim))
    if normalize_qk:
      ln = lambda: nnx.LayerNorm(self.head_dim, use_bias=False, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
      self.query_ln, self.key_ln = ln(), ln()
    else:
      self.query_ln, self.key_ln = nnx.data(None), nnx.data(None)
    concat = self.head_merge == "concat"
    out_in = (self.num_heads, self.head_dim) if concat else self.head_dim
    self.out = dense(out_in, self.out_features, k=out_kernel_init or kernel_init,
                     b=out_bias_init or bias_init, axis=(-2, -1) if concat else -1)
    params = kernels.init_params(self.score, rngs.params(), self.head_dim, num_heads=self.num_heads,
                                 **attention.score_kwargs)
    self.score_params = nnx.data(None if params is None else jax.tree.map(nnx.Param, params))
    self.rngs = rngs.dropout.fork() if keep_rngs and self.dropout_rate > 0 else nnx.data(None)
    self.attention_rngs = (rngs.attention.fork() if keep_rngs and self.stochastic_target
                           else nnx.data(None))
    self.cached_key = nnx.data(None)
    self.cached_value = nnx.data(None)
    self.cache_index = nnx.data(None)

  # The category, read from the spec (one source of truth).
  num_heads = property(lambda self: self.attention.num_heads)
  num_kv_heads = property(lambda self: self.attention.num_kv_heads or self.attention.num_heads)
  score = property(lambda self: self.attention.score)
  normalizer = property(lambda self: self.attention.normalizer)
  target = property(lambda self: self.attention.target)
  head_mode = property(lambda self: self.attention.head_mode)
  head_merge = property(lambda self: self.attention.head_merge)
  dropout_rate = property(lambda self: self.attention.dropout)

  def init_cache(self, input_shape: tuple[int, ...], dtype: Any = jnp.float32) -> None:
    """Cache for autoregressive decoding; ``input_shape`` = [batch..., max_length, features]."""
    cache_shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
    self.cached_key = nnx.Cache(jnp.zeros(cache_shape, dtype))
    self.cached_value = nnx.Cache(jnp.zeros(cache_shape, dtype))
    self.cache_index = nnx.Cache(jnp.array(0, dtype=jnp.int32))

  def set_view(self, deterministic: bool | None = None, decode: bool | None = None,
               batch_size: int | tuple[int, ...] | None = None,
               max_length: int | None = None) -> None:
    """Used by ``nnx.view`` (as in flax): set modes; with decode and no cache yet, make one."""
    if deterministic is not None:
      self.deterministic = deterministic
    if decode is not None:
      self.decode = decode
      if decode and self.cached_key is None:
        if batch_size is None or max_length is None:
          raise TypeError(f"{_NAME}: batch_size and max_length are needed to initialize the cache")
        batch = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
        self.init_cache((*batch, max_length, self.in_features), self.dtype or jnp.float32)

  def _update_cache(self, key, value, mask):
    """Writes the new key/value step into the cache; returns full cached k, v and the mask."""
    if self.cached_key is None or self.cached_value is None or self.cache_index is None:
      raise ValueError(f"{_NAME}: autoregressive cache not initialized, call init_cache first")
    *batch, max_length, hkv, d = self.cached_key.shape
    if key.shape != (*batch, 1, hkv, d):
      raise ValueError(f"{_NAME}: autoregressive cache shape error, expected key shape "
                       f"{(*batch, 1, hkv, d)} (one step) instead got {key.shape}")
    cur = self.cache_index[...]
    zero = jnp.zeros((), cur.dtype)
    idx = (zero,) * len(batch) + (cur, zero, zero)
    key = jax.lax.dynamic_update_slice(self.cached_key[...], key, idx)
    value = jax.lax.dynamic_update_slice(self.cached_value[...], value, idx)
    self.cached_key[...], self.cached_value[...] = key, value
    self.cache_index[...] += 1
    seen = jnp.broadcast_to(jnp.arange(max_length) <= cur, (*batch, 1, 1, max_length))
    return key, value, seen if mask is None else jnp.logical_and(mask, seen)

  def _rng(self, rngs, use_dropout: bool, sample: bool):
    """One PRNG key for the kernel: from the dropout and/or attention streams."""
    drop_stream, attn_stream = self.rngs, self.attention_rngs
    if isinstance(rngs, nnx.Rngs):
      drop_stream = rngs.dropout if use_dropout else None
      attn_stream = rngs.attention if sample else None
    elif isinstance(rngs, rnglib.RngStream):
      drop_stream = rngs
    keys = []
    for needed, stream, name in ((use_dropout, drop_stream, "dropout"),
                                 (sample, attn_stream, "attention")):
      if needed:
        if stream is None:
          raise ValueError(f"{_NAME}: pass rngs (with a {name!r} stream) to __call__, or build "
                           "the layer with keep_rngs=True")
        keys.append(stream())
    return _spec_call.one_key(keys)

  def _project_self(self, x: Array) -> tuple[Array, Array, Array]:
    """Self-attention's query, key and value as ONE product with the three kernels side by side
    ([in, H + 2·Hkv, D]): the same numbers as the three LinearGenerals, one larger matmul instead
    of three small ones (forward and backward)."""
    layers = (self.query, self.key, self.value)
    kernel = jnp.concatenate([layer.kernel[...] for layer in layers], axis=1)  # [in, H + 2Hkv, D]
    bias = jnp.concatenate([layer.bias[...] for layer in layers]) if self.use_bias else None
    x, kernel, bias = self.query.promote_dtype((x, kernel, bias), dtype=self.dtype)
    qkv = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                              precision=self.precision)  # [batch..., L, H + 2Hkv, D]
    if bias is not None:
      qkv = qkv + bias
    h, hkv = self.num_heads, self.num_kv_heads
    return qkv[..., :h, :], qkv[..., h:h + hkv, :], qkv[..., h + hkv:, :]

  def __call__(self, inputs_q: Array, inputs_k: Array | None = None,
               inputs_v: Array | None = None, *, mask: Array | None = None,
               deterministic: bool | None = None, rngs: Any = None, sow_weights: bool = False,
               decode: bool | None = None, is_causal: bool = False, return_weights: bool = False,
               return_aux: bool = False):
    """Attention of ``inputs_q`` [batch..., Lq, in] over ``inputs_k`` (default: itself).

    ``mask`` (bool or 0/1) broadcastable to [batch..., H, Lq, Lk], True = may attend.
    Returns out [batch..., Lq, out], then weights [batch..., H, Lq, Lk] if ``return_weights``,
    then the target's aux dict (e.g. ``log_prob`` [batch..., H, Lq]) if ``return_aux``.
    """
    if inputs_k is None:
      if inputs_v is not None:
        raise ValueError(f"{_NAME}: inputs_k cannot be None if inputs_v is not None")
      inputs_k = inputs_q
    if inputs_v is None:
      inputs_v = inputs_k
    if inputs_q.shape[-1] != self.in_features:
      raise ValueError(f"{_NAME}: inputs_q has {inputs_q.shape[-1]} features, the layer expects "
                       f"in_features={self.in_features}")
    if inputs_k is inputs_q and inputs_v is inputs_q and self.in_kv_features == self.in_features:
      query, key, value = self._project_self(inputs_q)
    else:
      query = self.query(inputs_q)  # [batch..., Lq, H, D]
      key = self.key(inputs_k)  # [batch..., Lk, Hkv, D]
      value = self.value(inputs_v)  # [batch..., Lk, Hkv, D]
    if self.normalize_qk:
      query, key = self.query_ln(query), self.key_ln(key)
    if mask is not None:
      mask = jnp.asarray(mask)
      mask = mask if mask.dtype == jnp.bool_ else mask != 0
    if first_from(decode, self.decode, False, error_msg=""):
      key, value, mask = self._update_cache(key, value, mask)

    train = False  # dropout / sampling active; the flag is only required when it matters
    if self.dropout_rate > 0 or self.stochastic_target:
      train = not first_from(deterministic, self.deterministic, error_msg=(
          f"{_NAME}: no `deterministic` argument given at construction or call (needed for "
          f"dropout_rate={self.dropout_rate} / target={self.target!r})"))
    use_dropout = train and self.dropout_rate > 0
    sample = train and self.stochastic_target
    rng = self._rng(rngs, use_dropout, sample)

    batch, lq, lk = query.shape[:-3], query.shape[-3], key.shape[-3]
    b = math.prod(batch)
    q4 = query.reshape((b,) + query.shape[-3:])  # [B, Lq, H, D]
    k4 = key.reshape((b,) + key.shape[-3:])  # [B, Lk, Hkv, D]
    v4 = value.astype(query.dtype).reshape((b,) + value.shape[-3:])  # [B, Lk, Hkv, D]
    k4 = k4.astype(query.dtype)
    # Only the batch dimensions are broadcast: a key-padding mask stays [B, 1, 1, Lk] (O(Lk); the
    # blocked and ring kernels mask block by block and never need it as [Lq, Lk]).
    if mask is not None:
      nb = len(batch)
      mask = mask.reshape((1,) * max(0, nb + 3 - mask.ndim) + mask.shape)
      if any(n > 1 for n in mask.shape[:-3]):
        mask = jnp.broadcast_to(mask, (*batch, *mask.shape[-3:]))
      mask = mask.reshape((-1,) + mask.shape[-3:])  # [B|1, H|1, Lq|1, Lk|1]
    want_weights = return_weights or sow_weights
    result = _spec_call.attend(self.attention, q4, k4, v4, self.score_params, use_dropout=use_dropout,
                               sample=sample, rng=rng, return_weights=want_weights, mask=mask,
                               causal=is_causal)
    x, aux = result[0], result[-1]  # x [B, Lq, H, D]
    x = x.reshape((*batch, lq, self.num_heads, self.head_dim))
    if self.head_merge == "mean":
      x = jnp.mean(x, axis=-2)  # [batch..., Lq, D]
    out = self.out(x)  # [batch..., Lq, out]
    outputs = (out,)
    if want_weights:
      weights = result[1].reshape((*batch, self.num_heads, lq, lk))  # [batch..., H, Lq, Lk]
      if sow_weights:
        self.sow(nnx.Intermediate, "attention_weights", weights)
      if return_weights:
        outputs += (weights,)
    if return_aux:
      outputs += (jax.tree.map(lambda a: a.reshape((*batch, self.num_heads, lq)), aux),)
    return outputs[0] if len(outputs) == 1 else outputs


def _check_spec_form(attention: Any, num_heads: Any, given: dict[str, Any]) -> None:
  """``attention=`` carries the whole category: num_heads must agree, the short-form keywords unset."""
  if not isinstance(attention, AttentionSpec):
    raise TypeError(f"{_NAME}: attention must be an attnlab.AttentionSpec, got {type(attention).__name__}")
  if attention.graph:
    raise ValueError(f"{_NAME}: attention is a graph attention spec (graph=True); use GraphAttention")
  if num_heads != attention.num_heads:
    raise ValueError(f"{_NAME}: num_heads={num_heads!r} differs from attention.num_heads="
                     f"{attention.num_heads}; pass MultiHeadAttention(attention.num_heads, ...)")
  defaults = inspect.signature(MultiHeadAttention.__init__).parameters
  both = [k for k in _CATEGORY if given[k] != defaults[k].default]
  if both:
    raise ValueError(f"{_NAME}: give the category either as keywords or as attention=AttentionSpec(...), "
                     f"not both; got attention= and {', '.join(f'{k}={given[k]!r}' for k in both)}")
