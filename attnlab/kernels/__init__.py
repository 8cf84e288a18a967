"""Functional attention kernels, one per category, selected by name (the research core).

    from attnlab import kernels
    out = kernels.attention(q, k, v, score="additive", params=kernels.init_params("additive", rng, 64))

Modules with a leading underscore (``_blocked``, ``_segments``, ``_edges``, ``_dropout``,
``_fastmath``) are the speed layer behind these names; research code does not need them.
"""

from attnlab.kernels.attention import attention
from attnlab.kernels.graph import (GraphScore, dense_graph_attention, get_graph_score, graph_attention,
                                   init_graph_params, segment_softmax)
from attnlab.kernels.normalizers import Normalizer, get_normalizer
from attnlab.kernels.scores import Score, get_score, init_params
from attnlab.kernels.targets import Target, get_target, with_weight_dropout

__all__ = [
    "attention", "init_params", "Score", "get_score", "Normalizer", "get_normalizer",
    "Target", "get_target", "with_weight_dropout",
    "graph_attention", "dense_graph_attention", "init_graph_params", "GraphScore", "get_graph_score",
    "segment_softmax",
]
