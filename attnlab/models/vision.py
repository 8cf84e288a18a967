"""Image models, family ``classifier`` (images ``inputs`` [B, S, S, C], optional ``question`` [B, Q]).

``vqa``: visual question answering over image regions (the seed's "football" example; Santoro et
al. 2017's Sort-of-CLEVR setting):

    image [B, S, S, C] -> conv_layers × (Conv k×k stride 2, ReLU; k = kernel)       -> [B, g, g, c]
    regions: each of the g·g cells, with its (row, col) in [-1, 1]                 -> [B, g², c + 2]
             (region_embedding=True: R also gets a learned vector per cell, as ViT's positions)
    mode="mlp":        the flattened cells and the question -> MLP (Santoro's CNN + MLP baseline)
    mode="cross":      R = Dense(regions); the question embedding is the QUERY of a
                       cross-attention over R                                     -> a [B, d]
    mode="self_cross": R = Dense([regions; question]) then self_layers pre-LN Transformer blocks
                       of self-attention among the regions (the relational step), then the cross-attention
    MLP([a; question embedding])                                                   -> logits [B, C]

``sagan_classifier``: a conv net with ``ImageSelfAttention`` (Zhang et al. 2019) between its stages:
Conv s2 → Conv s2 → SAGAN over the [S/4, S/4] map → Conv s2 → the flattened [S/8, S/8] map, with
the question's embedding when the task has one, MLP → logits.

Every attention layer holds the model's ``attention`` spec (every field honoured: scores,
normalisers, soft/hard/hard_st targets, heads, dropout, impl); with ``target="hard"`` each query
samples one region (REINFORCE with a moving-average baseline, attnlab.losses) and ``aux`` holds
``log_prob`` and ``entropy`` [B]; vqa's ``baseline="learned"`` adds ``value`` [B], the reward
predicted by an MLP from the question and the regions' mean before any attention (so no sample
changes it; gradient stopped at its input).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab import modules, validate
from attnlab.attention_spec import AttentionSpec
from attnlab.models import _common
from attnlab.models._norm import LayerNorm
from attnlab.models.transformer import Stack, attend, attention_layer, stack_options

Array = jax.Array
MODES = ("mlp", "cross", "self_cross")
BASELINES = ("average", "learned")


class ConvStack(nnx.Module):
  """``n`` × (Conv k×k, stride 2, SAME, ReLU): [B, S, S, C] -> [B, S/2ⁿ, S/2ⁿ, channels] (S even).

  ``kernel=2``: the windows do not overlap, so a cell of the last map sees exactly its 2ⁿ×2ⁿ pixels;
  ``kernel=3``: the usual overlapping 3×3 windows. Each convolution is written as its k² strided
  shifts, concatenated [B, S/2, S/2, k²·C], times a Dense kernel [k²·C, channels]: the same function
  as a convolution, but vmapping it over the runner's members (seeds) batches a matrix product
  instead of making a grouped convolution, which XLA:CPU runs many times slower."""

  def __init__(self, in_channels: int, channels: int, n: int, *, kernel: int = 3, rngs: nnx.Rngs):
    self.kernel = validate.choice("ConvStack", "kernel", kernel, (2, 3))
    self.convs = nnx.List([nnx.Linear(kernel ** 2 * (in_channels if i == 0 else channels), channels,
                                      rngs=rngs) for i in range(n)])

  def __call__(self, x: Array) -> Array:
    k = self.kernel
    for dense in self.convs:
      out = x.shape[1] // 2
      p = jnp.pad(x, ((0, 0), (0, k - 2), (0, k - 2), (0, 0)))  # SAME padding of a stride-2 window
      shifts = [p[:, i:i + 2 * out:2, j:j + 2 * out:2] for i in range(k) for j in range(k)]
      x = nnx.relu(dense(jnp.concatenate(shifts, -1)))  # [B, S/2, S/2, channels]
    return x


def _image(batch: dict) -> Array:
  x = jnp.asarray(batch["inputs"])
  if x.ndim != 4:
    raise ValueError(f"image models need inputs [batch, height, width, channels], got shape {x.shape}")
  return x


def _side(name: str, spec: dict, halvings: int) -> int:
  side = spec["image_size"]
  if side % 2 ** halvings:
    raise ValueError(f"model {name!r}: image_size {side} must be divisible by 2**{halvings} "
                     f"(its stride-2 convolutions)")
  return side // 2 ** halvings


@_common.register_model("vqa")
class VQA(nnx.Module):
  family = "classifier"
  inputs = "image"

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, attention: AttentionSpec, mode: str = "self_cross",
               channels: int = 32, conv_layers: int = 3, kernel: int = 3, d_model: int = 64,
               self_layers: int = 1, hidden: int = 128, region_embedding: bool = False,
               entropy_bonus: float = 0.01, baseline_decay: float = 0.9, baseline: str = "average"):
    _common.check_spec(self.name, spec, "num_classes", "image_size", "channels", "question_dim")
    where = f"model {self.name!r}"
    self.mode = validate.choice(where, "mode", mode, MODES)
    for arg, value in (("channels", channels), ("conv_layers", conv_layers), ("d_model", d_model),
                       ("self_layers", self_layers), ("hidden", hidden)):
      validate.positive_int(where, arg, value)
    g = _side(self.name, spec, conv_layers)
    self.cnn = ConvStack(spec["channels"], channels, conv_layers, kernel=kernel, rngs=rngs)
    axis = jnp.linspace(-1.0, 1.0, g) if g > 1 else jnp.zeros((1,))
    self.coords = nnx.data(jnp.stack(jnp.meshgrid(axis, axis, indexing="ij"), -1).reshape(g * g, 2))
    q = spec["question_dim"]
    self.question = nnx.Linear(q, d_model, rngs=rngs)
    if mode == "mlp":
      self.regions = self.ln = self.attn = self.relate = self.embedding = nnx.data(None)
      head_in = g * g * (channels + 2) + d_model
    else:
      self.regions = nnx.Linear(channels + 2 + (q if mode == "self_cross" else 0), d_model, rngs=rngs)
      self.ln = LayerNorm(d_model, rngs=rngs)
      self.embedding = (nnx.Param(0.02 * jax.random.normal(rngs.params(), (g * g, d_model)))
                        if region_embedding else nnx.data(None))  # [g², d], learned per region
      self.relate = (Stack(rngs=rngs, **stack_options(self.name, d_model=d_model, num_layers=self_layers,
                                                      mlp_dim=None, dropout_rate=0.0, attention=attention))
                     if mode == "self_cross" else nnx.data(None))
      self.attn = attention_layer(d_model, attention, rngs=rngs)
      head_in = 2 * d_model
    self.hidden = nnx.Linear(head_in, hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, spec["num_classes"], rngs=rngs)
    _common.reinforce_state(self, attention.target, entropy_bonus, baseline_decay)
    learned = validate.choice(where, "baseline", baseline, BASELINES) == "learned"
    if learned and (self.baseline is None or mode == "mlp"):
      raise ValueError(f"{where}: baseline='learned' needs a sampling attention target (hard) and "
                       f"mode 'cross' or 'self_cross'; got target {attention.target!r}, mode {mode!r}")
    self.value = (nnx.Sequential(nnx.Linear(2 * d_model, hidden, rngs=rngs), nnx.relu,
                                 nnx.Linear(hidden, 1, rngs=rngs)) if learned else nnx.data(None))

  def __call__(self, batch: dict, *, train: bool) -> tuple[Array, dict]:
    f = self.cnn(_image(batch))  # [B, g, g, c]
    b = f.shape[0]
    coords = jnp.broadcast_to(self.coords[None], (b,) + self.coords.shape)  # [B, g², 2]
    cells = jnp.concatenate([f.reshape(b, -1, f.shape[-1]), coords], -1)  # [B, g², c+2]
    question = jnp.asarray(batch["question"])  # [B, Q]
    qe = nnx.relu(self.question(question))  # [B, d]
    aux: dict = {}
    if self.mode == "mlp":
      feature = cells.reshape(b, -1)  # [B, g²(c+2)]
    else:
      if self.mode == "self_cross":
        cells = jnp.concatenate([cells, jnp.broadcast_to(question[:, None], (b, cells.shape[1],
                                                                            question.shape[-1]))], -1)
      r = self.regions(cells)  # [B, g², d]
      r = self.ln(r if self.embedding is None else r + self.embedding[...])
      seen = (None if self.value is None  # [B, 2d]: what no attention sample changes
              else jax.lax.stop_gradient(jnp.concatenate([jnp.mean(r, 1), qe], -1)))
      if self.relate is not None:
        r, aux = self.relate(r, mask=None, query_mask=None, train=train)  # regions attend to regions
      a, cross_aux = attend(self.attn, qe[:, None], r, train=train)  # [B, 1, d]: question over regions
      feature, aux = a[:, 0], _common.add_aux(aux, cross_aux)
      if self.value is not None:  # the reward predicted before any sample: a learned baseline
        aux["value"] = self.value(seen)[:, 0]  # [B]
    h = nnx.relu(self.hidden(jnp.concatenate([feature, qe], -1)))
    return self.head(h), aux  # [B, C]


@_common.register_model("sagan_classifier")
class SaganClassifier(nnx.Module):
  family = "classifier"
  inputs = "image"

  def __init__(self, *, spec: dict, rngs: nnx.Rngs, attention: AttentionSpec, channels: int = 32,
               reduction: int = 8, hidden: int = 128, entropy_bonus: float = 0.01,
               baseline_decay: float = 0.9):
    _common.check_spec(self.name, spec, "num_classes", "image_size", "channels")
    where = f"model {self.name!r}"
    for arg, value in (("channels", channels), ("reduction", reduction), ("hidden", hidden)):
      validate.positive_int(where, arg, value)
    g = _side(self.name, spec, 3)
    self.stem = ConvStack(spec["channels"], channels, 2, rngs=rngs)
    self.sagan = modules.ImageSelfAttention(channels, reduction=reduction, attention=attention, rngs=rngs)
    self.last = ConvStack(channels, channels, 1, rngs=rngs)
    q = spec.get("question_dim", 0)
    self.question = nnx.Linear(q, channels, rngs=rngs) if q else nnx.data(None)
    self.hidden = nnx.Linear(channels * (g * g + (1 if q else 0)), hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, spec["num_classes"], rngs=rngs)
    _common.reinforce_state(self, attention.target, entropy_bonus, baseline_decay)

  def __call__(self, batch: dict, *, train: bool) -> tuple[Array, dict]:
    x = self.stem(_image(batch))  # [B, S/4, S/4, c]
    sampled = self.sagan.stochastic_target
    out = self.sagan(x, deterministic=not train, return_weights=sampled, return_aux=True,
                     sow_weights=_common.sow_enabled())
    x = self.last(out[0])  # [B, S/8, S/8, c]
    aux = _common.hard_aux(out[-1], out[1] if sampled else None)
    feature = x.reshape(x.shape[0], -1)  # [B, g²c]
    if self.question is not None:
      feature = jnp.concatenate([feature, nnx.relu(self.question(jnp.asarray(batch["question"])))], -1)
    return self.head(nnx.relu(self.hidden(feature))), aux  # [B, C]
