"""The lm (configs/shakespeare.py, shrunk by overrides) trained on this process's devices, for the
sequence-parallel checks (tests/ring_checks.py on 4 virtual devices, tests/test_ring.py on one)."""

import json
import os
import tempfile

from attnlab import config as config_lib, train
from attnlab.rundata import RunData


def train_lm(overrides, sequence=0, impl=None):
  """Trains configs/shakespeare.py with ``overrides`` ({dotted key: value}), ``parallel.sequence`` and
  ``model.attention.impl``; returns its metrics.jsonl lines, result.json and the run's mesh and first
  training batch layout."""
  c = config_lib.load_file("configs/shakespeare.py")
  c.unlock()
  for key, value in {**overrides, "parallel.sequence": sequence,
                     **({"model.attention.impl": impl} if impl else {})}.items():
    config_lib.set_dotted(c, key, tuple(value) if isinstance(value, list) else value)
  with tempfile.TemporaryDirectory(prefix=f"attnlab_lm_p{sequence}_") as workdir:
    result = train.train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      metrics = [json.loads(line) for line in f]
  mesh = train.run_mesh(c)
  inputs = RunData(train.make_task(c), c, list(c.train.seeds), mesh).train(0, c.train.eval_every,
                                                                            c.train.steps)["inputs"]
  layout = {"mesh": dict(mesh.shape), "shape": list(inputs.shape),
            "spec": [str(x) for x in inputs.sharding.spec],
            "shard": list(inputs.addressable_shards[0].data.shape)}
  return {"metrics": metrics, "result": result, "layout": layout}
