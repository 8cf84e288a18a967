"""``seq2seq``: Transformer for sequence-to-sequence tasks, family ``seq2seq`` (teacher forcing).

Decoder input = [BOS] + labels[:, :-1]. Two ways for the output to see the source (``source``):

* ``"cross"`` (encoder–decoder, Vaswani et al. 2017)::

      src [B, Ls] -> Embed + pos -> num_layers x Block(self-attn, non-PAD keys)      -> memory [B, Ls, d]
      dec [B, Lt] -> Embed + pos -> num_layers x Block(causal self-attn,
                                                       cross-attn to memory)         -> [B, Lt, d]

* ``"self"`` (decoder only, no cross-attention): one causal stack over [src; dec] [B, Ls+Lt]; source
  positions see the whole (non-PAD) source, output positions the source and earlier labels
  (a prefix LM); the logits are read at the Lt output positions.

Then Dense -> logits [B, Lt, V]. Source and output share the token embedding (one vocabulary).
Every attention layer (self and cross) holds the model's ``attention`` spec (all fields honoured).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import validate
from attnlab.attention_spec import AttentionSpec
from attnlab.data.base import BOS, PAD
from attnlab.models import _common
from attnlab.models.transformer import Embedder, Stack, stack_options

SOURCES = ("cross", "self")


def decoder_input(labels: jax.Array) -> jax.Array:
  """[BOS] + labels[:, :-1] (teacher forcing): [B, Lt] int."""
  return jnp.concatenate([jnp.full_like(labels[:, :1], BOS), labels[:, :-1]], axis=1)


@_common.register_model("seq2seq")
class Seq2SeqTransformer(nnx.Module):
  family = "seq2seq"

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, attention: AttentionSpec, d_model: int = 64,
               num_layers: int = 2, mlp_dim: int | None = None, qkv_features: int | None = None,
               dropout_rate: float = 0.0,
               source: str = "cross", entropy_bonus: float = 0.01, baseline_decay: float = 0.9):
    _common.check_spec(self.name, spec, "vocab_size", "seq_len", "label_len")
    self.source = validate.choice(f"model {self.name!r}", "source", source, SOURCES)
    opts = stack_options(self.name, d_model=d_model, num_layers=num_layers, mlp_dim=mlp_dim,
                         qkv_features=qkv_features, dropout_rate=dropout_rate,
                         attention=attention)
    ls, lt, v = spec["seq_len"], spec["label_len"], spec["vocab_size"]
    if source == "cross":
      self.src_embed = Embedder(d_model, ls, vocab_size=v, rngs=rngs)
      self.encoder = Stack(rngs=rngs, **opts)
      self.tgt_embed = Embedder(d_model, lt, vocab_size=v, rngs=rngs)
      self.decoder = Stack(cross=True, rngs=rngs, **opts)
    else:  # one embedding (positions 0..Ls+Lt-1) and one causal stack
      self.src_embed = Embedder(d_model, ls + lt, vocab_size=v, rngs=rngs)
      self.encoder, self.tgt_embed = nnx.data(None), nnx.data(None)
      self.decoder = Stack(rngs=rngs, **opts)
    self.head = nnx.Linear(d_model, v, rngs=rngs)
    _common.reinforce_state(self, attention.target, entropy_bonus, baseline_decay)

  def __call__(self, batch: dict, *, train: bool) -> tuple[jax.Array, dict]:
    src, labels = jnp.asarray(batch["inputs"]), jnp.asarray(batch["labels"])  # [B, Ls], [B, Lt]
    dec = decoder_input(labels)  # [B, Lt]
    ls, lt = src.shape[1], dec.shape[1]
    if self.source == "cross":
      s, s_valid = self.src_embed(src)  # [B, Ls, d], [B, Ls]
      memory, aux = self.encoder(s, mask=s_valid[:, None, None, :], query_mask=s_valid, train=train)
      t, _ = self.tgt_embed(dec)  # [B, Lt, d]
      h, aux_d = self.decoder(t, mask=None, is_causal=True, query_mask=labels != PAD, train=train,
                              memory=memory, memory_mask=s_valid[:, None, None, :])  # [B, Lt, d]
    else:
      x = jnp.concatenate([src, dec], axis=1)  # [B, Ls+Lt]
      h, valid = self.src_embed(x)  # [B, L, d], [B, L]
      j = jnp.arange(ls + lt)
      prefix = (j[None, :] < ls) | (j[None, :] <= j[:, None])  # [L, L]: source keys or earlier
      mask = prefix[None, None] & valid[:, None, None, :]  # [B, 1, L, L]
      q_valid = jnp.concatenate([valid[:, :ls], labels != PAD], axis=1)  # [B, L] samples that matter
      h, aux_d = self.decoder(h, mask=mask, query_mask=q_valid, train=train)
      h, aux = h[:, ls:], {}  # [B, Lt, d]
    return self.head(h), _common.add_aux(aux, aux_d)  # [B, Lt, V]
