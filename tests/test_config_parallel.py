"""``config.parallel.sequence``: its validation, the run's mesh, how batches are laid out on it, and
saved configs from before the section existed (a run's config.json, a sweep's fingerprint)."""

import json

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from attnlab import config as config_lib, parallel, rundir, train


def _shakespeare(**changes):
  c = config_lib.load_file("configs/shakespeare.py")
  c.unlock()
  for key, value in changes.items():
    config_lib.set_dotted(c, key.replace("__", "."), value)
  return c


def test_default_is_zero_and_valid():
  c = _shakespeare()
  assert c.parallel.sequence == 0
  config_lib.validate(c)
  config_lib.validate(_shakespeare(model__attention__impl="ring", train__attention_maps=False,
                                   parallel__sequence=4))


@pytest.mark.parametrize("value, error, match", [
    (-1, ValueError, r"parallel.sequence must be a positive int .* or 0 .*got -1"),
    (2, ValueError, r"parallel.sequence=2 splits the sequence .* needs model.attention.impl='ring' "
                    r"\(got 'auto'\); valid: parallel.sequence 0 or 1"),
])
def test_bad_values_name_the_key_and_the_choices(value, error, match):
  with pytest.raises(error, match=match):
    config_lib.validate(_shakespeare(parallel__sequence=value))


def test_wrong_type_is_refused():
  c = _shakespeare()
  with pytest.raises(TypeError, match="config: parallel.sequence: .*1.5"):
    config_lib.set_dotted(c, "parallel.sequence", 1.5)
  c = config_lib.base_config()
  c.parallel = {"sequence": True}
  c.task.name, c.model.name = "shakespeare", "lm"
  with pytest.raises(TypeError, match=r"parallel.sequence must be int, got True"):
    config_lib.validate(c)


def test_sequence_size_defaults_and_divisibility():
  assert parallel.sequence_size(0, True, 8) == 8  # ring: all devices
  assert parallel.sequence_size(0, False, 8) == 1  # data parallelism only
  assert parallel.sequence_size(2, True, 8) == 2
  with pytest.raises(ValueError, match=r"parallel.sequence=3 must divide the number of devices \(8\).*"
                                       r"valid: 1, 2, 4, 8"):
    parallel.sequence_size(3, True, 8)
  with pytest.raises(ValueError, match="parallel.sequence must be an int >= 1"):
    parallel.make_mesh(sequence=True)


def test_run_mesh_on_this_process_devices():
  n = jax.device_count()
  mesh = train.run_mesh(_shakespeare(model__attention__impl="ring", train__attention_maps=False))
  assert dict(mesh.shape) == {"data": 1, "seq": n}
  assert dict(train.run_mesh(_shakespeare()).shape) == {"data": n, "seq": 1}
  with pytest.raises(ValueError, match=rf"config: parallel.sequence={n + 1} must divide the number of "
                                       rf"devices \({n}\)"):
    train.run_mesh(_shakespeare(model__attention__impl="ring", parallel__sequence=n + 1))


@pytest.mark.parametrize("mesh_shape, shape, axis, spec", [
    ((2, 2), (4, 1, 8, 64), 2, P(None, None, "data", "seq")),  # [K, S, B, L]: B over data, L over seq
    ((4, 1), (4, 1, 8, 64), 2, P(None, None, "data", None)),  # P = 1: data parallelism
    ((1, 4), (4, 1, 8, 64), 2, P(None, None, None, "seq")),  # all devices on the sequence
    ((2, 2), (4, 1, 3, 64), 2, P(None, None, None, "seq")),  # a batch of 3 is replicated over data
    ((2, 2), (4, 1, 8, 63), 2, P(None, None, "data", None)),  # a length 2 does not divide
    ((2, 2), (4, 1, 8), 2, P(None, None, "data")),  # no axis after the examples (labels)
])
def test_batch_sharding_uses_each_axis_size(mesh_shape, shape, axis, spec):
  mesh = AbstractMesh(mesh_shape, ("data", "seq"))
  assert parallel.batch_sharding(mesh, shape, axis).spec == spec


def test_config_json_written_before_the_section_still_resumes(tmp_path):
  c = _shakespeare()
  saved = config_lib.to_dict(c)
  del saved["parallel"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  rundir.check_config(tmp_path, config_lib.to_dict(c), write=False)
  ring = _shakespeare(model__attention__impl="ring", train__attention_maps=False, parallel__sequence=2)
  saved_ring = config_lib.to_dict(ring)
  del saved_ring["parallel"]
  (tmp_path / "config.json").write_text(json.dumps(saved_ring))
  with pytest.raises(ValueError, match=r"differs in: parallel.sequence"):
    rundir.check_config(tmp_path, config_lib.to_dict(ring), write=False)
