"""Flax NNX attention layers built on ``attnlab.kernels`` (no attention math here).

* ``MultiHeadAttention``: drop-in for ``flax.nnx.MultiHeadAttention`` with score / normalizer /
  target / head_mode / head_merge / num_kv_heads as configuration.
* ``GraphAttention``: the GAT layer (Veličković et al. 2018) over an edge list or dense adjacency.
"""

from attnlab.modules.graph import GraphAttention, sparse_dropout
from attnlab.modules.mha import MultiHeadAttention

__all__ = ["GraphAttention", "MultiHeadAttention", "sparse_dropout"]
