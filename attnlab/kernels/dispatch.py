"""Which implementation ``attention(impl="auto")`` runs: one pure function of the platform and call.

    choose_impl(platform, score, normalizer, target, ..., lq, lk) -> "dpa" | "blocked" | "dense"

* ``"dpa"`` (NVIDIA GPU only): ``jax.nn.dot_product_attention(implementation="cudnn")``, cuDNN's
  fused flash attention, for ``scaled_dot`` + ``softmax`` + ``soft`` in float16/bfloat16 with equal
  key and value widths of at most 128 (a multiple of 8), no returned weights and no normalizer
  options: the one category and the shapes a vendor kernel computes. (``implementation=None`` would
  be JAX's dense XLA path, O(L²) memory, in jax 0.10.)
* ``"blocked"``: the online-softmax path (``_blocked``) wherever it applies and the head has at
  least ``AUTO_BLOCKED_MIN_PAIRS`` (query, key) pairs; on CPU and TPU also for ``scaled_dot``.
* ``"dense"``: everything else (every normalizer and target, returned weights, short sequences).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnlab.kernels import normalizers as _normalizers
from attnlab.kernels import targets as _targets

Array = jax.Array

# auto: blocked from this many (query, key) pairs per head (dense is faster below, see benchmarks/).
AUTO_BLOCKED_MIN_PAIRS = 256 * 256
DPA_PLATFORMS = ("gpu", "cuda")
DPA_DTYPES = ("float16", "bfloat16")


def blocked_kind(normalizer, target, *, return_weights=False, normalizer_kwargs=None):
  """("softmax" | "sigmoid", None) when the blocked path applies, else (None, why not).

  ``normalizer`` and ``target`` are names, a ``Target`` or already resolved.
  """
  norm = _normalizers.get_normalizer(normalizer) if isinstance(normalizer, str) else normalizer
  tgt = _targets.resolve(target)
  kind = {_normalizers.softmax: "softmax", _normalizers.sigmoid: "sigmoid"}.get(norm.fn)
  if kind is None or not norm.online:
    return None, (f"normalizer {normalizer!r} has no online (blocked) form; blocked supports "
                  "'softmax' and 'sigmoid'")
  if tgt.fn is not _targets.soft:
    return None, f"target {target!r} needs the weights; blocked supports only target='soft'"
  if return_weights:
    return None, "return_weights=True needs the [Lq, Lk] weights, which blocked never forms"
  extra = set(normalizer_kwargs or {}) - {"bias"}
  if extra:
    return None, f"normalizer options {sorted(extra)} are not supported by blocked"
  bias = (normalizer_kwargs or {}).get("bias")
  if bias is not None and jnp.size(bias) != 1:
    return None, "a non-scalar sigmoid bias is not supported by blocked"
  return kind, None


def choose_impl(platform: str, score: str, normalizer, target, *, return_weights: bool = False,
                normalizer_kwargs: dict | None = None, lq: int, lk: int, d: int, dv: int,
                dtype: str = "float32") -> str:
  """The implementation ``impl="auto"`` uses on ``platform`` (``jax.default_backend()``).

  Args:
    platform: "cpu", "gpu" (or "cuda"), "rocm", "tpu", ...
    score, normalizer, target: the call's categories (names, or a ``Target``).
    return_weights, normalizer_kwargs: as passed to ``attention``.
    lq, lk: query and key lengths; d, dv: key and value widths; dtype: the query's dtype name.
  Returns:
    "dpa", "blocked" or "dense" (see the module docstring).
  """
  kind, _ = blocked_kind(normalizer, target, return_weights=return_weights,
                         normalizer_kwargs=normalizer_kwargs)
  if (platform in DPA_PLATFORMS and score == "scaled_dot" and kind == "softmax" and not normalizer_kwargs
      and str(dtype) in DPA_DTYPES and d == dv and d <= 128 and d % 8 == 0):
    return "dpa"
  return "blocked" if kind is not None and lq * lk >= AUTO_BLOCKED_MIN_PAIRS else "dense"


def _rows_with_keys(mask: Array, causal: bool, lq: int) -> Array:
  """bool [B|1, H|1, Lq|1]: whether query row i may attend to any key (mask and causal)."""
  if not causal:
    return jnp.any(mask, axis=-1)
  if mask.shape[-1] == 1:
    return mask[..., 0]  # key 0 is visible to every row under the causal mask
  if mask.shape[-2] == 1:  # one key mask for all rows: row i needs a valid key j <= i
    first = jnp.where(jnp.any(mask, axis=-1), jnp.argmax(mask, axis=-1), mask.shape[-1])  # [B|1, H|1, 1]
    return first <= jnp.arange(lq)
  return jnp.any(mask & jnp.tril(jnp.ones(mask.shape[-2:], jnp.bool_)), axis=-1)


def dot_product_attention(query: Array, key: Array, value: Array, mask: Array | None, causal: bool,
                          implementation: str | None = "cudnn") -> Array:
  """Scaled dot-product softmax attention through ``jax.nn.dot_product_attention``.

  query [B, Lq, H, D], key/value [B, Lk, Hkv, D] (GQA: Hkv divides H), mask bool [B|1, H|1, Lq|1, Lk|1]
  or None (True = may attend), ``causal`` as in ``attention`` (query i sees keys j <= i). Rows with
  nothing to attend to give zero output (jax.nn would average the values there). Returns [B, Lq, H, D].
  """
  out = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=causal,
                                     implementation=implementation)
  if mask is None:
    return out
  ok = _rows_with_keys(mask, causal, query.shape[1])  # [B|1, H|1, Lq|1]
  return jnp.where(jnp.swapaxes(ok, 1, 2)[..., None], out, jnp.zeros((), out.dtype))
