"""Tiny Shakespeare (lm): a character-level causal language model.

    attnlab train --config=configs/shakespeare.py --workdir=runs/shakespeare
    attnlab train --config=configs/shakespeare.py --config.data_path=/path/to/input.txt --workdir=...

Sequence-parallel with ring attention: P devices split each sequence, the other n/P the batch
(parallel.sequence; a [n/P, P] mesh, here data 2 x seq 2 on 4 virtual CPU devices):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 attnlab train --config=configs/shakespeare.py \
        --config.model.attention.impl=ring --config.parallel.sequence=2 \
        --config.train.attention_maps=False --workdir=runs/shakespeare_ring

Unset, ``data_path`` is $ATTNLAB_DATA_DIR/tinyshakespeare/input.txt if there, else the copy shipped
with attnlab (attnlab.data.paths). A small 2-layer model reaches a token
accuracy around 0.45-0.5 in a few minutes on a CPU.
"""

from ml_collections import config_dict

from attnlab.config import base_config


def get_config(arg=None):
  c = base_config()
  c.data_path = config_dict.placeholder(str)  # None: attnlab.data.paths decides
  c.task.name = "shakespeare"
  c.task.kwargs = {"path": c.get_ref("data_path"), "seq_len": 64, "eval_size": 256}
  c.model.name = "lm"
  c.model.kwargs = {"d_model": 64, "num_layers": 2, "dropout_rate": 0.0}
  c.model.attention.update(score="scaled_dot", normalizer="softmax", target="soft", num_heads=4,
                           head_mode="split", head_merge="concat")  # fields: attnlab.AttentionSpec
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.optim.clip_norm = 1.0
  c.train.steps = 1500
  c.train.batch_size = 32
  c.train.eval_every = 250
  c.train.eval_batch_size = 256
  c.train.seeds = (0,)
  c.lock()
  return c
