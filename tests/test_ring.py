"""Ring attention (impl="ring"): on 4 virtual CPU devices in a subprocess (tests/ring_checks.py:
XLA_FLAGS must be set before jax is imported), and its refusals in this process."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from attnlab import config as config_lib, kernels

HERE = pathlib.Path(__file__).resolve().parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "ATTNLAB_TEST_JAX_CACHE": jax.config.jax_compilation_cache_dir,
       "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}


def _checks(group):
  out = subprocess.run([sys.executable, str(HERE / "ring_checks.py"), group], capture_output=True,
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
  2-D (data, seq) mesh with the batch sharded over data; the lm trained with impl=ring from a config
  logs the same losses as with impl=blocked."""
  checks, numbers = _checks("memory")
  assert set(checks) == {"memory/linear_and_below_dense_over_P", "mutation/unmutated_hook_passes",
                         "mutation/wrong_direction_fails", "mutation/skipped_step_fails",
                         "layer/mha_ring_equals_dense", "mesh/data_and_seq",
                         "lm/ring_losses_equal_blocked"}
  failed = {name: err for name, err in checks.items() if err is not None}
  assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())
  assert numbers["temp_growth_4x_length"]["ring"] < 6


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
