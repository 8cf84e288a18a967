"""``ImageSelfAttention``: the SAGAN layer (Zhang et al. 2019, "Self-Attention GANs") on [B, H, W, C].

Every position of the feature map is a token; 1×1 convolutions (a Dense per position) give the
queries and keys at a reduced width ``qk_features`` (C/8 by default, the paper's) and the values
at full width ``v_features`` (C); the attention over the N = H·W positions is
``attnlab.kernels.attention`` of the layer's ``AttentionSpec`` (every score, normaliser, target,
head mode and ``impl``, the blocked path included, applies); an output 1×1 convolution maps back
to C; the result is added through a learned scalar γ initialised to 0:

    q = x W_q [N, H, d_qk],  k = x W_k [N, H, d_qk],  v = x W_v [N, H, d_v]
    o = W_o · attention(q, k, v)      (heads concatenated, or averaged with head_merge="mean")
    y = γ · o + x                     (γ = 0 at init: the layer starts as the identity)

The paper's score is the unscaled dot product ``s_ij = f(x_i)ᵀ g(x_j)`` (``score="dot"``) with a
softmax over the keys. The category comes as keywords (score, normalizer, target, head_mode,
head_merge, num_heads, *_kwargs, dropout_rate, impl) or as one ``attention=AttentionSpec``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import kernels, validate
from attnlab.attention_spec import AttentionSpec, SpecError
from attnlab.modules import _spec_call

Array = jax.Array
_NAME = "ImageSelfAttention"


class ImageSelfAttention(nnx.Module):
  """SAGAN self-attention over the positions of a feature map, with reduced q/k width and γ residual."""

  def __init__(self, in_features: int, *, qk_features: int | None = None, v_features: int | None = None,
               reduction: int = 8, num_heads: int = 1, score: str = "dot", normalizer: str = "softmax",
               target: str = "soft", head_mode: str = "split", head_merge: str = "concat",
               score_kwargs: dict | None = None, normalizer_kwargs: dict | None = None,
               target_kwargs: dict | None = None, dropout_rate: float = 0.0, impl: str = "auto",
               attention: AttentionSpec | None = None, rngs: nnx.Rngs):
    """``qk_features`` defaults to ``max(1, in_features // reduction)`` and ``v_features`` to
    ``in_features``; with ``head_mode="split"`` both are split into ``num_heads`` heads."""
    validate.positive_int(_NAME, "in_features", in_features)
    validate.positive_int(_NAME, "reduction", reduction)
    if attention is None:
      try:
        attention = AttentionSpec(score=score, normalizer=normalizer, target=target, head_mode=head_mode,
                                  head_merge=head_merge, num_heads=num_heads,
                                  score_kwargs=score_kwargs or {}, normalizer_kwargs=normalizer_kwargs or {},
                                  target_kwargs=target_kwargs or {}, dropout=dropout_rate, impl=impl)
      except SpecError as e:
        raise e.named(f"{_NAME}: ") from None
    elif not isinstance(attention, AttentionSpec):
      raise TypeError(f"{_NAME}: attention must be an attnlab.AttentionSpec, got {type(attention).__name__}")
    attention.require(_NAME, num_kv_heads=(None,), graph=(False,))
    self.attention = attention
    h = attention.num_heads
    self.qk_features = qk_features if qk_features is not None else max(1, in_features // reduction)
    self.v_features = v_features if v_features is not None else in_features
    validate.positive_int(_NAME, "qk_features", self.qk_features)
    validate.positive_int(_NAME, "v_features", self.v_features)
    split = attention.head_mode == "split"
    if split:
      validate.divides(_NAME, "num_heads", h, "qk_features", self.qk_features)
      validate.divides(_NAME, "num_heads", h, "v_features", self.v_features)
    self.qk_dim = self.qk_features // h if split else self.qk_features
    self.v_dim = self.v_features // h if split else self.v_features
    self.stochastic_target = kernels.get_target(attention.target).stochastic
    dense = lambda fout, fin=in_features, axis=-1: nnx.LinearGeneral(fin, fout, axis=axis, rngs=rngs)
    self.query = dense((h, self.qk_dim))
    self.key = dense((h, self.qk_dim))
    self.value = dense((h, self.v_dim))
    concat = attention.head_merge == "concat"
    self.out = dense(in_features, (h, self.v_dim) if concat else self.v_dim, (-2, -1) if concat else -1)
    self.gamma = nnx.Param(jnp.zeros((), jnp.float32))
    params = kernels.init_params(attention.score, rngs.params(), self.qk_dim, num_heads=h,
                                 **attention.score_kwargs)
    self.score_params = nnx.data(None if params is None else jax.tree.map(nnx.Param, params))
    self.dropout_rngs = rngs.dropout.fork() if attention.dropout > 0 else nnx.data(None)
    self.attention_rngs = rngs.attention.fork() if self.stochastic_target else nnx.data(None)

  def __call__(self, x: Array, *, deterministic: bool = True, return_weights: bool = False,
               return_aux: bool = False, sow_weights: bool = False) -> Any:
    """x [B, H, W, C] -> y [B, H, W, C]; then weights [B, heads, HW, HW] if ``return_weights``, then
    the target's aux ([B, heads, HW] arrays, e.g. the hard target's ``log_prob``) if ``return_aux``.
    ``deterministic=False`` samples a stochastic target and applies attention-weight dropout."""
    if x.ndim != 4 or x.shape[-1] != self.query.in_features[0]:
      raise ValueError(f"{_NAME}: x must be [batch, height, width, {self.query.in_features[0]}], "
                       f"got shape {tuple(x.shape)}")
    b, hh, ww, c = x.shape
    tokens = x.reshape(b, hh * ww, c)  # [B, N, C]
    q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)  # [B, N, heads, d]
    spec = self.attention
    use_dropout = not deterministic and spec.dropout > 0
    sample = not deterministic and self.stochastic_target
    keys = [s() for on, s in ((use_dropout, self.dropout_rngs), (sample, self.attention_rngs)) if on]
    want_weights = return_weights or sow_weights
    z, *rest = _spec_call.attend(spec, q, k, v, self.score_params, use_dropout=use_dropout, sample=sample,
                                 rng=_spec_call.one_key(keys), return_weights=want_weights)
    if spec.head_merge == "mean":
      z = jnp.mean(z, axis=-2)  # [B, N, d_v]
    o = self.out(z)  # [B, N, C]
    y = self.gamma[...] * o.reshape(x.shape) + x
    outputs = (y,)
    if sow_weights:
      self.sow(nnx.Intermediate, "attention_weights", rest[0])
    if return_weights:
      outputs += (rest[0],)
    if return_aux:
      outputs += (rest[-1],)
    return outputs[0] if len(outputs) == 1 else outputs
