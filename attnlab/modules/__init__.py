"""Flax NNX attention layers built on ``attnlab.kernels`` (no attention math here).

* ``MultiHeadAttention``: drop-in for ``flax.nnx.MultiHeadAttention`` with the attention category
  as keywords (score / normalizer / target / head_mode / head_merge / num_kv_heads, ...) or as one
  ``attnlab.AttentionSpec`` (``attention=spec``).
* ``GraphAttention``: the GAT layer (Veličković et al. 2018) over a ``GraphBatch``, an edge list or
  a dense adjacency; its category likewise (a graph spec).
* ``ImageSelfAttention``: the SAGAN layer (Zhang et al. 2019) over the positions of a [B, H, W, C]
  feature map, reduced q/k width and a γ-scaled residual; its category likewise.
"""

from attnlab.modules.graph import GraphAttention, node_dropout
from attnlab.modules.image import ImageSelfAttention
from attnlab.modules.mha import MultiHeadAttention

__all__ = ["GraphAttention", "ImageSelfAttention", "MultiHeadAttention", "node_dropout"]
