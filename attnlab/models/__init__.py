"""The model zoo: every model takes its attention category as one ``AttentionSpec`` (``attention``).

| name          | family          | file            | what                                              |
|---------------|-----------------|-----------------|---------------------------------------------------|
| `encoder`     | classifier      | classifier.py   | Transformer encoder, mean or CLS pooling           |
| `glimpse`     | classifier      | glimpse.py      | learned/recurrent query over image regions, soft/hard |
| `seq2seq`     | seq2seq         | seq2seq.py      | encoder–decoder Transformer (or prefix decoder)   |
| `gru_seq2seq` | seq2seq         | rnn_seq2seq.py  | GRU encoder–decoder, Bahdanau or Luong attention  |
| `lm`          | lm              | lm.py           | decoder-only causal Transformer                   |
| `gat`         | node_classifier | gat.py          | 2-layer GAT (Veličković et al. 2018)              |
| `vqa`         | classifier      | vision.py       | CNN regions, question query, opt. self-attention  |
| `sagan_classifier` | classifier | vision.py       | conv net with SAGAN ImageSelfAttention            |

The model contract (every model keeps it; ``_common`` holds the helpers it names):

* Register: ``@register_model(name)`` on an ``nnx.Module`` class with a class attribute ``family``
  (one of ``attnlab.data.FAMILIES``; the runner pairs it with tasks of that family) and, for graph
  models, ``graph_attention = True``; image models (batch ``inputs`` [B, S, S, C]) set
  ``inputs = "image"``.
* Receive: ``__init__(self, *, spec, rngs, attention, **kwargs)``: ``spec`` the task's sizes
  (check the keys you need with ``check_spec``), ``rngs`` ``nnx.Rngs(params, dropout=, attention=)``,
  ``attention`` the ``AttentionSpec`` to pass to every attention layer unchanged (refuse the fields
  you cannot honour with ``attention.require``), kwargs keyword-only with defaults (they are the
  config's ``model.kwargs``). Call ``reinforce_state(self, attention.target, entropy_bonus,
  baseline_decay)`` last, so a sampling target gets its REINFORCE baseline.
* Return: ``model(batch, *, train) -> (logits, aux)``: ``batch`` in the family's format
  (``attnlab.data.base``), logits ``[B, C]`` (classifier), ``[B, Lt, V]`` (seq2seq, lm) or ``[N, C]``
  (node_classifier); ``aux`` is ``{}`` or, for a sampling target, ``{"log_prob": [B], "entropy": [B]}``
  (``hard_aux`` builds it, ``add_aux`` sums several layers' terms).
* The runner builds the model with ``registry.get("model", name)(spec=task.spec,
  rngs=..., **attnlab.config.model_kwargs(config))`` and calls it only through
  ``attnlab.losses.loss_and_metrics`` (training and evaluation) and ``attention_maps`` (plots,
  sowing weights only while ``sow_enabled()``).

The Transformer models and glimpse honour every field of the spec; gru_seq2seq and gat honour a
subset and refuse the rest (their docstrings). ``attention_maps(model, batch)`` returns one
example's attention weights for plots.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from attnlab.models import classifier, gat, glimpse, lm, rnn_seq2seq, seq2seq, vision  # noqa: F401 (register)
from attnlab.models._common import Baseline, register_model, sow_enabled, sowing

__all__ = ["attention_maps", "Baseline", "register_model", "sow_enabled", "sowing"]
_WEIGHTS = "attention_weights"


def attention_maps(model: nnx.Module, batch: dict[str, Any], *, example: int = 0) -> dict[str, np.ndarray]:
  """Attention weights of one example, keyed by the attention layer's path in the model.

  Runs ``model(batch[example:example+1], train=False)`` (the whole graph for node classifiers)
  with sowing on and returns NumPy arrays: ``[H, Lq, Lk]`` for sequence attention (a layer that
  attends several times, e.g. recurrent glimpses, has its calls concatenated along Lq); for graph
  layers ``<path>/edges`` [2, E] (sender, receiver; self loops included) and ``<path>/alpha`` [E, H].
  """
  if getattr(model, "family", None) != "node_classifier":
    batch = jax.tree.map(lambda v: np.asarray(v)[example:example + 1], batch)
  graphdef, state = nnx.split(model)

  @jax.jit  # one compiled program, not one small compile per eager op
  def sown_weights(state, batch):
    with sowing():
      _, sown = nnx.capture(lambda m: m(batch, train=False), nnx.Intermediate)(nnx.merge(graphdef, state))
    return nnx.to_pure_dict(sown)

  calls: dict[str, list] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(sown_weights(state, batch))[0]:
    keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
    cut = keys.index(_WEIGHTS)  # [..layer path.., attention_weights, call index, (edges|alpha)]
    name = "/".join(keys[:cut] + keys[cut + 2:])
    calls.setdefault(name, []).append(np.asarray(leaf))
  out = {}
  for name, values in calls.items():
    if values[0].ndim == 4:  # [1, H, Lq, Lk] per call
      out[name] = np.concatenate([v[0] for v in values], axis=-2)  # [H, ΣLq, Lk]
    else:
      out[name] = values[0]
  return out
