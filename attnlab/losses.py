"""The shared objective: ``loss_and_metrics(model, batch, *, family, train) -> (loss, metrics)``.

Task loss by family (metrics["loss"] is always this task loss, comparable across categories):

| family            | loss                                       | metrics                               |
|-------------------|--------------------------------------------|---------------------------------------|
| `classifier`      | CE(logits [B, C], label [B])               | loss, accuracy                        |
|                   |                                            | (+ relational_accuracy, nonrelational_ |
|                   |                                            | accuracy when the batch has relational)|
| `seq2seq`         | token CE over labels != PAD                | loss, accuracy (token), seq_accuracy  |
| `lm`              | token CE over labels != PAD                | loss, accuracy (token)                |
| `node_classifier` | CE over the nodes of ``batch["mask"]``     | loss, accuracy                        |

(node classifiers may return logits for the first n ≤ N nodes only: a computation subgraph lists
the nodes whose outputs count first, attnlab.data.graph; labels and mask are then read for those.)

Hard attention (the model's ``aux`` has ``log_prob`` [B], the summed log-probabilities of its
sampled attention positions) is not differentiable through the sample; the returned loss adds the
score-function (REINFORCE) term with a baseline and an entropy bonus (Xu et al. 2015, Show, Attend
and Tell):

    loss = CE − mean_b[ sg(r_b − baseline) · log_prob_b ] − λ · mean_b[ H(α)_b ]

with reward r_b = −CE_b (the example's mean token CE), ``baseline`` the bias-corrected exponential
moving average of the batch-mean rewards of EARLIER training steps (``model.baseline``, a non-Param
nnx.Variable updated in training calls with decay ``model.baseline_decay``; 0 before the first)
and λ = ``model.entropy_bonus``. A model whose ``aux`` also has ``value`` [B], a learned
prediction of r_b from what the sample does not depend on (Mnih et al. 2014, Recurrent Models of
Visual Attention), gets that as a per-example baseline instead, and the loss adds
mean_b[(value_b − r_b)²]. Extra metrics then: ``reinforce`` (the surrogate term), ``baseline``
(its batch mean), ``entropy`` (and ``value_loss``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from attnlab.data.base import FAMILIES, PAD

Array = jax.Array


def reinforce_surrogate(log_prob: Array, reward: Array, baseline: Array | float) -> Array:
  """−mean_b[sg(reward_b − baseline) · log_prob_b]: its gradient is an unbiased estimate of
  −∇ E[reward] for samples drawn with probabilities exp(log_prob) (for any constant baseline)."""
  advantage = jax.lax.stop_gradient(reward - baseline)  # [B]
  return -jnp.mean(advantage * log_prob)


def _masked_mean(x: Array, mask: Array, axis: Any = None) -> Array:
  m = mask.astype(jnp.float32)
  return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def _per_example(logits: Array, batch: dict, family: str) -> tuple[Array, dict]:
  """(CE per example [B] (nodes: [N]), metrics of the task loss)."""
  if family == "classifier":
    labels = jnp.asarray(batch["label"])  # [B]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B]
    right = jnp.argmax(logits, -1) == labels  # [B]
    metrics = {"loss": jnp.mean(ce), "accuracy": jnp.mean(right)}
    if "relational" in batch:  # visual QA (data.clevr): accuracy per kind of question
      rel = jnp.asarray(batch["relational"])  # [B] bool
      metrics.update(relational_accuracy=_masked_mean(right, rel),
                     nonrelational_accuracy=_masked_mean(right, ~rel))
    return ce, metrics
  if family == "node_classifier":
    n = logits.shape[0]  # all N nodes, or the first n (a computation subgraph's roots)
    labels, mask = jnp.asarray(batch["labels"])[:n], jnp.asarray(batch["mask"])[:n]  # [n], [n]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [N]
    right = jnp.argmax(logits, -1) == labels
    return ce, {"loss": _masked_mean(ce, mask), "accuracy": _masked_mean(right, mask)}
  labels = jnp.asarray(batch["labels"])  # [B, L]
  mask = labels != PAD  # [B, L]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B, L]
  right = jnp.argmax(logits, -1) == labels  # [B, L]
  metrics = {"loss": _masked_mean(ce, mask), "accuracy": _masked_mean(right, mask)}
  if family == "seq2seq":
    metrics["seq_accuracy"] = jnp.mean(jnp.all(right | ~mask, axis=-1))
  return _masked_mean(ce, mask, axis=-1), metrics  # [B]


def loss_and_metrics(model: Any, batch: dict, *, family: str, train: bool) -> tuple[Array, dict]:
  """Runs ``model(batch, train=train)`` and returns (scalar loss to minimise, scalar metrics)."""
  if family not in FAMILIES:
    raise ValueError(f"loss_and_metrics: unknown family {family!r}; valid families: "
                     f"{', '.join(FAMILIES)}")
  if getattr(model, "family", family) != family:
    raise ValueError(f"loss_and_metrics: model {type(model).__name__} has family "
                     f"{model.family!r}, but family={family!r}")
  logits, aux = model(batch, train=train)
  ce, metrics = _per_example(logits, batch, family)
  loss = metrics["loss"]
  if "log_prob" in aux:
    if getattr(model, "baseline", None) is None:
      raise ValueError(f"loss_and_metrics: model {type(model).__name__} returns aux['log_prob'] "
                       "(hard attention) but has no `baseline` variable "
                       "(see attnlab.models._common.reinforce_state)")
    reward = jax.lax.stop_gradient(-ce)  # [B]
    baseline = aux["value"] if "value" in aux else model.baseline.value_now()  # [B] or []
    surrogate = reinforce_surrogate(aux["log_prob"], reward, baseline)
    entropy = jnp.mean(aux["entropy"]) if "entropy" in aux else jnp.zeros(())
    loss = loss + surrogate - model.entropy_bonus * entropy
    if "value" in aux:  # the learned baseline regresses the reward
      metrics["value_loss"] = jnp.mean((aux["value"] - reward) ** 2)
      loss = loss + metrics["value_loss"]
    if train:
      model.baseline.update(jnp.mean(reward), model.baseline_decay)
    metrics.update(reinforce=surrogate, baseline=jnp.mean(baseline), entropy=entropy)
  return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
