"""Ring attention checks on 4 virtual CPU devices, run by tests/test_ring.py in a subprocess.

XLA_FLAGS must give the host platform 4 devices before jax is imported, which a pytest worker (jax
already imported) cannot do. ``python tests/ring_checks.py GROUP [OVERRIDES]`` prints one JSON line
``{"checks": {name: null | error}, "numbers": {...}}``; GROUP is ``equal`` (ring vs the
single-device dense path, outputs and gradients, every registered score), ``memory`` (compiled
per-device memory, a wrong ring caught, the layer under a mesh), ``lm`` (the lm trained from
configs/shakespeare.py with OVERRIDES, a JSON {dotted key: value}, model.attention.impl=ring and
parallel.sequence 2 and 4: its metrics and batch layout) or ``one`` (the same on one device).

Tolerances are the blocked path's (tests/test_blocked.py): outputs 2e-5 + 1e-4·|dense|, gradients
1e-4 + 1e-3·|dense| relative to the gradient's largest entry.
"""

import json
import math
import os
import sys
import traceback

P = 4
GROUP = sys.argv[1] if len(sys.argv) > 1 else ""
DEVICES = 1 if GROUP == "one" else P
# XLA_FLAGS also holds the tests' cheap compile flags (tests/conftest.py) when pytest runs this.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={DEVICES}"]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

if os.environ.get("ATTNLAB_TEST_JAX_CACHE"):
  jax.config.update("jax_compilation_cache_dir", os.environ["ATTNLAB_TEST_JAX_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from attnlab import registry  # noqa: E402
from attnlab import kernels  # noqa: E402
from attnlab.kernels import ring  # noqa: E402
from attnlab.kernels.scores import Score  # noqa: E402
from tests import lm_runs  # noqa: E402

B, H, HKV, D, DV = 2, 4, 2, 8, 5  # GQA groups of 2
BLOCK = 8  # several blocks per device and ring step
CUSTOM = "ring_checks_neg_l2"
# (name, causal, mask kind, Lq, Lk): lengths P does not divide (padded), cross-attention lengths.
MODES = [("plain", False, None, 37, 37), ("causal_keypad", True, "key_pad", 37, 37),
         ("mask_cross", False, "mask", 29, 45), ("causal_even", True, None, 40, 40)]


def _custom_score():
  """A score registered from outside attnlab: −t·|Wq − k|², its own pairwise (no dot fast path)."""
  def pairwise(params, fq, fk):
    return -params["t"] * jnp.sum(jnp.square(fq[:, None, :] - fk[None, :, :]), axis=-1)

  return Score(pairwise=pairwise, project_q=lambda p, q: q @ p["W"],
               init=lambda rng, dim: {"W": jax.random.normal(rng, (dim, dim)) / math.sqrt(dim),
                                      "t": jnp.asarray(0.3, jnp.float32)})


def _data(lq, lk, mask_kind, seed=0):
  rs = np.random.RandomState(seed)
  f32 = lambda *shape: jnp.asarray(rs.standard_normal(shape), jnp.float32)
  q, k, v, cot = f32(B, lq, H, D), f32(B, lk, HKV, D), f32(B, lk, HKV, DV), f32(B, lq, H, DV)
  mask = None
  if mask_kind == "mask":
    m = rs.uniform(size=(B, H, lq, lk)) < 0.7
    m[1, 2, 5] = False  # a row with nothing to attend to
    mask = jnp.asarray(m)
  elif mask_kind == "key_pad":
    m = np.ones((B, 1, 1, lk), bool)
    m[0, ..., lk - 9:] = False  # ragged lengths: example 0 has lk − 9 keys
    mask = jnp.asarray(m)
  return q, k, v, mask, cot


def _out_and_grads(fn, q, k, v, params, cot):
  out, vjp = jax.vjp(fn, q, k, v, params)
  return out, vjp(cot)


def _close(got, want, atol, rtol, what):
  for i, (a, b) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    a, b = np.asarray(a), np.asarray(b)
    if not np.all(np.isfinite(a)):
      raise AssertionError(f"{what}[{i}]: not finite")
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, atol=atol * scale, rtol=rtol, err_msg=f"{what}[{i}]")


def check_equal(score, normalizer, mode, ring_fn=None, per_head=False):
  """Ring (under the 4-device mesh) vs the single-device dense path: outputs and gradients wrt q, k,
  v and the score's params. ``ring_fn(q, k, v, params, mask, causal)`` replaces the ring call."""
  _, causal, mask_kind, lq, lk = mode
  q, k, v, mask, cot = _data(lq, lk, mask_kind)
  params = kernels.init_params(score, jax.random.key(1), D, num_heads=H if per_head else None)
  call = lambda impl: (lambda q, k, v, p: kernels.attention(
      q, k, v, score=score, normalizer=normalizer, params=p, mask=mask, causal=causal, impl=impl,
      block_size=BLOCK))
  dense = jax.jit(lambda *a: _out_and_grads(call("dense"), *a))(
      q, k, v, params, cot)
  with jax.set_mesh(ring.make_mesh()):
    fn = call("ring") if ring_fn is None else (lambda q, k, v, p: ring_fn(q, k, v, p, mask, causal))
    got = jax.jit(lambda *a: _out_and_grads(fn, *a))(q, k, v, params, cot)
  _close(got[0], dense[0], 2e-5, 1e-4, "output")
  _close(got[1], dense[1], 1e-4, 1e-3, "gradient")
  if mask_kind == "mask":  # the empty row stays zero
    np.testing.assert_array_equal(np.asarray(got[0])[1, 5, 2], 0.0)


def group_equal(checks, numbers):
  """Every registered score (and one registered here) × softmax/sigmoid, each score meeting a causal
  and a non-causal mode and each normalizer all four modes; per-head params for every other one."""
  registry.register("score", CUSTOM, _custom_score())
  scores = sorted(registry.names("score"))
  numbers["scores"] = scores
  for i, score in enumerate(scores):
    for j, normalizer in enumerate(("softmax", "sigmoid")):
      mode = MODES[(i + 3 * j) % 4]
      numbers.setdefault("modes", []).append([score, normalizer, mode[0]])
      checks[f"equal/{score}/{normalizer}/{mode[0]}"] = _run(
          check_equal, score, normalizer, mode, per_head=bool((i + j) % 2))


def _wrong_ring(**mutation):
  """A ring call with a mutated rotation, in attention()'s layout (scaled_dot, softmax)."""
  def fn(q, k, v, params, mask, causal):
    b, lq, h, d = q.shape
    hkv = k.shape[2]
    q5 = q.reshape(b, lq, hkv, h // hkv, d)
    mask5 = None if mask is None else mask.reshape(mask.shape[0], 1, 1, *mask.shape[2:])
    out = ring.attend_ring(q5, k, v, mask5, score=kernels.get_score("scaled_dot"), kind="softmax",
                           causal=causal, block_q=BLOCK, block_k=BLOCK, **mutation)
    return out.reshape(b, lq, h, v.shape[-1])
  return fn


def _compiled_temp(fn, *args):
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(stats.temp_size_in_bytes)


def check_memory(numbers):
  """Per-device temp memory of the compiled ring forward+backward grows linearly in L and is at most
  1/P of the single-device dense program's (whose [L, L] scores grow quadratically)."""
  d = 16
  temps = {}
  for n in (512, 2048):
    x = jax.ShapeDtypeStruct((1, n, 1, d), jnp.float32)
    for impl in ("ring", "dense"):
      loss = lambda q, k, v, impl=impl: jnp.sum(kernels.attention(q, k, v, causal=True, impl=impl,
                                                                  block_size=128) ** 2)
      g = jax.grad(loss, argnums=(0, 1, 2))
      if impl == "ring":
        with jax.set_mesh(ring.make_mesh()):
          temps[impl, n] = _compiled_temp(g, x, x, x)
      else:
        temps[impl, n] = _compiled_temp(g, x, x, x)
  numbers["temp_bytes"] = {f"{impl}/{n}": t for (impl, n), t in temps.items()}
  ring_growth = temps["ring", 2048] / temps["ring", 512]
  dense_growth = temps["dense", 2048] / temps["dense", 512]
  numbers["temp_growth_4x_length"] = {"ring": ring_growth, "dense": dense_growth}
  assert ring_growth < 6, f"ring temp grows {ring_growth:.1f}x for 4x length (linear: ~4, quadratic: 16)"
  assert dense_growth > 10, f"dense temp grows {dense_growth:.1f}x: the reference is not quadratic"
  for n in (512, 2048):
    assert temps["ring", n] <= temps["dense", n] / P, (
        f"L={n}: ring temp {temps['ring', n]} > dense temp {temps['dense', n]} / {P}")


def check_layer():
  """MultiHeadAttention(impl="ring") under the mesh equals impl="dense" with the same weights."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from attnlab import modules  # pylint: disable=g-import-not-at-top
  mk = lambda impl: modules.MultiHeadAttention(4, 16, num_kv_heads=2, score="additive", impl=impl,
                                               rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.RandomState(3).standard_normal((2, 22, 16)), jnp.float32)
  want = mk("dense")(x, is_causal=True)
  with jax.set_mesh(ring.make_mesh()):
    got = jax.jit(lambda x: mk("ring")(x, is_causal=True))(x)
  _close(got, want, 2e-5, 1e-4, "layer output")


def check_data_and_seq_mesh():
  """Under a 2 x 2 mesh (data, seq), the batch sharded over data: ring still equals dense."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", ring.SEQ_AXIS))
  q, k, v, _, cot = _data(21, 21, None, seed=4)
  call = lambda impl: (lambda q, k, v, p: kernels.attention(q, k, v, causal=True, impl=impl,
                                                            block_size=BLOCK))
  want = jax.jit(lambda *a: _out_and_grads(call("dense"), *a))(
      q, k, v, None, cot)
  with jax.set_mesh(mesh):
    put = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    got = jax.jit(lambda *a: _out_and_grads(call("ring"), *a))(
        put(q), put(k), put(v), None, put(cot))
  _close(got[0], want[0], 2e-5, 1e-4, "output")
  _close(got[1], want[1], 1e-4, 1e-3, "gradient")


def group_lm(checks, numbers):
  """The lm trained with ring attention and parallel.sequence P = 2 (data 2 x seq 2) and 4 (seq 4):
  its metrics and batch layout, compared with one device by tests/test_ring.py."""
  overrides = json.loads(sys.argv[2])
  for p in (2, 4):
    try:
      numbers[f"P{p}"] = lm_runs.train_lm(overrides, p, "ring")
      checks[f"lm/sequence_{p}"] = None
    except Exception:  # pylint: disable=broad-except  (reported to the test, which fails)
      checks[f"lm/sequence_{p}"] = traceback.format_exc(limit=6)[-2000:]


def group_one(checks, numbers):
  """The one-device reference of group_lm (for a pytest process with several devices)."""
  numbers["P1"] = lm_runs.train_lm(json.loads(sys.argv[2]))
  checks["lm/one_device"] = None


def _run(fn, *args, **kwargs):
  try:
    fn(*args, **kwargs)
    return None
  except Exception as e:  # pylint: disable=broad-except  (reported to the test, which fails)
    return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"[:2000]


def _mutant_fails(mutation):
  """The equality check run on a wrong ring must fail (causal, ragged: every step's block matters)."""
  err = _run(check_equal, "scaled_dot", "softmax", MODES[1], ring_fn=_wrong_ring(**mutation))
  if err is None:
    raise AssertionError(f"a ring mutated by {mutation} passed the equality check")


def group_memory(checks, numbers):
  checks["memory/linear_and_below_dense_over_P"] = _run(check_memory, numbers)
  checks["mutation/unmutated_hook_passes"] = _run(
      check_equal, "scaled_dot", "softmax", MODES[1], ring_fn=_wrong_ring())
  checks["mutation/wrong_direction_fails"] = _run(_mutant_fails, {"_shift": -1})
  checks["mutation/skipped_step_fails"] = _run(_mutant_fails, {"_steps": P - 1})
  checks["layer/mha_ring_equals_dense"] = _run(check_layer)
  checks["mesh/data_and_seq"] = _run(check_data_and_seq_mesh)


def main():
  group = sys.argv[1]
  assert len(jax.devices()) == DEVICES, jax.devices()
  checks, numbers = {}, {}
  {"equal": group_equal, "memory": group_memory, "lm": group_lm, "one": group_one}[group](checks, numbers)
  print(json.dumps({"checks": checks, "numbers": numbers}))


if __name__ == "__main__":
  main()
