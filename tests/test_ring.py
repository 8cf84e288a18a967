"""Ring attention (impl="ring"): on 4 virtual CPU devices in a subprocess (tests/ring_checks.py:
XLA_FLAGS must be set before jax is imported), and its refusals in this process."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import config as config_lib, kernels
from tests import lm_runs

HERE = pathlib.Path(__file__).resolve().parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "ATTNLAB_TEST_JAX_CACHE": jax.config.jax_compilation_cache_dir,
       "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}


def _checks(group, *args):
  out = subprocess.run([sys.executable, str(HERE / "ring_checks.py"), group, *args], capture_output=True,
                       text=True, timeout=400, env=ENV)
  assert out.returncode == 0, out.stderr[-4000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  return report["checks"], report["numbers"]


def test_ring_equals_dense_for_every_score():
  """Outputs and gradients (q, k, v, params) equal the dense path's: every registered score and one
  registered by the helper, softmax and sigmoid, causal or not, GQA, lengths P does not divide,
  key padding (ragged lengths), a full mask with an empty row, cross-attention lengths."""
  checks, numbers = _checks("equal")
  assert len(checks) == 2 * len(numbers["scores"]) >= 14
  modes = {(n, m) for _, n, m in numbers["modes"]}
  assert len(modes) == 8  # each normalizer meets all four modes
  failed = {name: err for name, err in checks.items() if err is not None}
  assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_ring_memory_mutations_and_layer():
  """Compiled per-device temp memory is linear in L and ≤ 1/P of dense's; a ring rotated the wrong
  way or missing a step fails the equality check; MultiHeadAttention(impl="ring") under a mesh; a
  2-D (data, seq) mesh with the batch sharded over data."""
  checks, numbers = _checks("memory")
  assert set(checks) == {"memory/linear_and_below_dense_over_P", "mutation/unmutated_hook_passes",
                         "mutation/wrong_direction_fails", "mutation/skipped_step_fails",
                         "layer/mha_ring_equals_dense", "mesh/data_and_seq"}
  failed = {name: err for name, err in checks.items() if err is not None}
  assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())
  assert numbers["temp_growth_4x_length"]["ring"] < 6


# A tiny lm (configs/shakespeare.py, one layer): 8 steps of batch 4, context 64, evaluated every 4 steps.
LM = {"task.kwargs.seq_len": 64, "task.kwargs.eval_size": 16, "model.kwargs.d_model": 32,
      "model.kwargs.num_layers": 1, "model.attention.num_heads": 2, "optim.warmup_steps": 0,
      "train.steps": 8, "train.eval_every": 4, "train.batch_size": 4, "train.eval_batch_size": 16,
      "train.attention_maps": False}


def _losses(run):
  """[(step, split, loss)] of a run's metrics.jsonl, and its final val loss from result.json."""
  return ([(m["step"], m["split"], m["loss"][0]) for m in run["metrics"]],
          run["result"]["metrics"]["val"]["loss"]["mean"])


def test_lm_sequence_parallel_equals_one_device():
  """The lm trained with ring attention on 4 devices, the sequence split over P = 2 (data 2 x seq 2)
  and P = 4 (seq 4), logs the same train loss at every step and the same val losses as one device
  with the default attention. Tolerance rtol 1e-4: the sharded runs add the same float32 terms in
  another order (loss and gradient sums over the data and seq shards, the ring's merges of
  per-device softmaxes), so the losses differ by float32 rounding (<= 4e-7 relative on CPU); the
  margin covers a reference on another backend. A ring rotated the wrong way moves them by up to
  6e-3. The batch layout is asserted too: a batch sharded over the wrong axis trains to the same
  losses (sharding never changes the maths), only its layout shows it."""
  checks, numbers = _checks("lm", json.dumps(LM))
  failed = {name: err for name, err in checks.items() if err is not None}
  assert set(checks) == {"lm/sequence_2", "lm/sequence_4"} and not failed, "\n".join(failed.values())
  if jax.device_count() == 1:
    one = lm_runs.train_lm(LM)
  else:
    _, one = _checks("one", json.dumps(LM))
    one = one["P1"]
  assert one["result"]["devices"] == 1
  want, want_val = _losses(one)
  assert len(want) == 8 + 2 and want[0][2] - want[-2][2] > 0.1  # 8 train steps, 2 evaluations; it learns
  k, b, length = LM["train.eval_every"], LM["train.batch_size"], LM["task.kwargs.seq_len"]
  for p, data in ((2, 2), (4, 1)):
    run = numbers[f"P{p}"]
    assert run["result"]["devices"] == 4
    layout = run["layout"]  # inputs [K, S, B, L]: B over data, L over seq
    assert layout["mesh"] == {"data": data, "seq": p}
    assert layout["shape"] == [k, 1, b, length]
    assert layout["spec"][2:4] == ["data" if data > 1 else "None", "seq"]
    assert layout["shard"] == [k, 1, b // data, length // p]
    got, got_val = _losses(run)
    assert [x[:2] for x in got] == [x[:2] for x in want]
    np.testing.assert_allclose([x[2] for x in got], [x[2] for x in want], rtol=1e-4, err_msg=f"P={p}")
    np.testing.assert_allclose(got_val, want_val, rtol=1e-4, err_msg=f"P={p} final val loss")


def test_ring_config_refuses_attention_maps():
  c = config_lib.load_file("configs/shakespeare.py")
  c.unlock()
  c.model.attention.impl = "ring"
  with pytest.raises(ValueError, match=r"impl='ring'.*train.attention_maps must be False"):
    config_lib.validate(c)
  c.train.attention_maps = False
  config_lib.validate(c)


def test_ring_refusals():
  """No sequence mesh, or a normalizer without an online form: a ValueError naming the fix."""
  q = jnp.zeros((1, 8, 2, 4))
  with pytest.raises(ValueError, match=r"needs a mesh with a 'seq' axis.*jax.set_mesh"):
    kernels.attention(q, q, q, impl="ring")
  with pytest.raises(ValueError, match=r"impl='ring' does not apply.*'softmax' and 'sigmoid'"):
    kernels.attention(q, q, q, normalizer="sparsemax", impl="ring")
  with pytest.raises(ValueError, match=r"impl='ring' does not apply.*target='soft'"):
    kernels.attention(q, q, q, target="hard", deterministic=True, impl="ring")
