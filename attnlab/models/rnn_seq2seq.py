"""``gru_seq2seq``: GRU encoder–decoder with attention, family ``seq2seq`` (teacher forcing).

The classic setting of the additive-vs-multiplicative comparison. Attention is single-head over the
RAW encoder states (no q/k/v projections), computed by ``attnlab.kernels.attention``, so ``score``
is exactly the paper's: additive vᵀtanh(W_q s + W_k h + b) (Bahdanau et al. 2015), dot sᵀh,
general sᵀWh, concat vᵀtanh(W[s; h]) (Luong et al. 2015), or any registered score.

    src [B, Ls] -> Embed -> forward GRU ‖ backward GRU (PAD-masked) -> Dense -> memory H [B, Ls, d]
    s_0 = tanh(W_0 · backward state at position 0)                              [B, d]

``style="bahdanau"``: attend with the PREVIOUS state, feed the context into the GRU (sequential)::

    c_t = attn(s_{t-1}, H);  s_t = GRU(s_{t-1}, [E y_{t-1}; c_t]);  o_t = [s_t; c_t]

``style="luong"``: run the GRU first, attend with the CURRENT state (all steps in one call)::

    s_t = GRU(s_{t-1}, E y_{t-1});  c_t = attn(s_t, H);  o_t = [s_t; c_t]

Both: logits_t = W_out tanh(W_o o_t) [B, Lt, V]. Maps: [B, 1, Lt, Ls] sown as ``attention``.

Of the ``attention`` spec it honours score, normalizer, target, their kwargs and impl (auto or
dense: the maps are always formed); head_mode and head_merge make no difference for its one head.
It refuses num_heads != 1, num_kv_heads other than None or 1, dropout > 0 (no attention-weight
dropout here; ``dropout_rate`` drops embeddings and outputs) and impl="blocked".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import kernels, validate
from attnlab.attention_spec import AttentionSpec
from attnlab.data.base import PAD
from attnlab.models import _common
from attnlab.models.seq2seq import decoder_input

STYLES = ("bahdanau", "luong")


class StateAttention(nnx.Module):
  """One-head attention of query states [B, Lq, d] over memory [B, Ls, d] (raw states)."""

  def __init__(self, dim: int, attention: AttentionSpec, *, rngs: nnx.Rngs):
    attention.require("model 'gru_seq2seq'", num_heads=(1,), num_kv_heads=(None, 1), dropout=(0.0,),
                      impl=("auto", "dense"))
    self.attention = attention
    params = kernels.init_params(attention.score, rngs.params(), dim, **attention.score_kwargs)
    self.score_params = nnx.data(None if params is None else jax.tree.map(nnx.Param, params))

  def __call__(self, query, memory, valid, *, train: bool, rng=None):
    """-> context [B, Lq, d], weights [B, Lq, Ls], target aux (hard: log_prob [B, 1, Lq])."""
    params = None if self.score_params is None else jax.tree.map(
        lambda p: p[...], self.score_params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    a = self.attention
    c, w, aux = kernels.attention(
        query[:, :, None], memory[:, :, None], memory[:, :, None],  # [B, L, 1, d]: one head
        score=a.score, normalizer=a.normalizer, target=a.target, mask=valid[:, None, None, :],
        params=params, rng=rng, deterministic=rng is None, return_weights=True, return_aux=True,
        normalizer_kwargs=dict(a.normalizer_kwargs), target_kwargs=dict(a.target_kwargs),
        impl=a.impl)
    return c[:, :, 0], w[:, 0], aux  # [B, Lq, d], [B, Lq, Ls]


def run_gru(cell: nnx.GRUCell, x, valid, h0, *, reverse: bool = False):
  """GRU over x [B, L, I] (PAD steps keep the state): states [B, L, d]."""
  def step(h, inp):
    x_t, v_t = inp  # [B, I], [B]
    h = jnp.where(v_t[:, None], cell(h, x_t)[0], h)  # [B, d]
    return h, h
  _, hs = jax.lax.scan(step, h0, (x.swapaxes(0, 1), valid.swapaxes(0, 1)), reverse=reverse)
  return hs.swapaxes(0, 1)  # [B, L, d]


@_common.register_model("gru_seq2seq")
class GruSeq2Seq(nnx.Module):
  family = "seq2seq"

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, attention: AttentionSpec, d_model: int = 64,
               style: str = "luong", dropout_rate: float = 0.0, entropy_bonus: float = 0.01,
               baseline_decay: float = 0.9):
    _common.check_spec(self.name, spec, "vocab_size")
    self.style = validate.choice(f"model {self.name!r}", "style", style, STYLES)
    d, v = d_model, spec["vocab_size"]
    self.embed = nnx.Embed(v, d, rngs=rngs)
    self.enc_fwd = nnx.GRUCell(d, d, rngs=rngs)
    self.enc_bwd = nnx.GRUCell(d, d, rngs=rngs)
    self.enc_out = nnx.Linear(2 * d, d, rngs=rngs)
    self.init_state = nnx.Linear(d, d, rngs=rngs)
    self.cell = nnx.GRUCell(2 * d if style == "bahdanau" else d, d, rngs=rngs)
    self.attn = StateAttention(d, attention, rngs=rngs)
    self.stochastic = kernels.get_target(attention.target).stochastic
    self.attention_rngs = rngs.attention.fork() if self.stochastic else nnx.data(None)
    self.out = nnx.Linear(2 * d, d, rngs=rngs)
    self.head = nnx.Linear(d, v, rngs=rngs)
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)
    _common.reinforce_state(self, attention.target, entropy_bonus, baseline_decay)

  def __call__(self, batch: dict, *, train: bool) -> tuple[jax.Array, dict]:
    src, labels = jnp.asarray(batch["inputs"]), jnp.asarray(batch["labels"])  # [B, Ls], [B, Lt]
    dec = decoder_input(labels)  # [B, Lt]
    valid = src != PAD  # [B, Ls]
    det = not train
    e = self.drop(self.embed(src), deterministic=det)  # [B, Ls, d]
    h0 = jnp.zeros(e.shape[:1] + e.shape[2:])  # [B, d]
    fwd = run_gru(self.enc_fwd, e, valid, h0)  # [B, Ls, d]
    bwd = run_gru(self.enc_bwd, e, valid, h0, reverse=True)  # [B, Ls, d]
    memory = self.enc_out(jnp.concatenate([fwd, bwd], -1))  # [B, Ls, d]
    s0 = jnp.tanh(self.init_state(bwd[:, 0]))  # [B, d]
    y = self.drop(self.embed(dec), deterministic=det)  # [B, Lt, d]
    rng = self.attention_rngs() if (train and self.stochastic) else None
    if self.style == "luong":
      states = run_gru(self.cell, y, jnp.ones(dec.shape, bool), s0)  # [B, Lt, d]
      context, weights, aux = self.attn(states, memory, valid, train=train, rng=rng)
    else:
      keys = None if rng is None else jax.random.split(rng, dec.shape[1])  # [Lt] keys

      def step(s, inp):  # s [B, d]
        y_t, key_t = inp
        c, w, a = self.attn(s[:, None], memory, valid, train=train, rng=key_t)  # [B, 1, d]
        s = self.cell(s, jnp.concatenate([y_t, c[:, 0]], -1))[0]  # [B, d]
        return s, (s, c[:, 0], w[:, 0], a)

      _, (states, context, weights, aux) = jax.lax.scan(step, s0, (y.swapaxes(0, 1), keys))
      states, context, weights = (t.swapaxes(0, 1) for t in (states, context, weights))
      aux = jax.tree.map(lambda a: a[..., 0].transpose(1, 2, 0), aux)  # [B, 1, Lt]
    if _common.sow_enabled():
      self.attn.sow(nnx.Intermediate, "attention_weights", weights[:, None])  # [B, 1, Lt, Ls]
    o = jnp.tanh(self.out(jnp.concatenate([states, context], -1)))  # [B, Lt, d]
    logits = self.head(self.drop(o, deterministic=det))  # [B, Lt, V]
    return logits, _common.hard_aux(aux, weights[:, None], query_mask=labels != PAD)
