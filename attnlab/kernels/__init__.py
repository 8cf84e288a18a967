"""Functional attention kernels, one per category, selected by name.

    from attnlab import kernels
    out = kernels.attention(q, k, v, score="additive", params=kernels.init_params("additive", rng, 64))
"""

from attnlab.kernels import segments
from attnlab.kernels.attention import attend_one_head, attention
from attnlab.kernels.dropout import dropout_weights, materialize, with_weight_dropout
from attnlab.kernels.graph import (GraphScore, dense_graph_attention, edge_incidence, edge_scores,
                                   edges_to_adjacency, get_graph_score, graph_attention,
                                   init_graph_params, layer_prefix, prepare_edges, segment_softmax,
                                   with_self_loops)
from attnlab.kernels.segments import Incidence, SparseMatrix, gather_sum, incidence
from attnlab.kernels.normalizers import Normalizer, entmax15, get_normalizer, sigmoid, softmax, sparsemax
from attnlab.kernels.scores import Score, get_score, init_params
from attnlab.kernels.targets import Target, get_target

__all__ = [
    "attention", "attend_one_head", "init_params",
    "Score", "Normalizer", "Target", "get_score", "get_normalizer", "get_target",
    "softmax", "sparsemax", "entmax15", "sigmoid",
    "dropout_weights", "with_weight_dropout", "materialize",
    "GraphScore", "get_graph_score", "init_graph_params", "graph_attention", "dense_graph_attention",
    "edge_scores", "segment_softmax", "with_self_loops", "prepare_edges", "edges_to_adjacency",
    "edge_incidence", "layer_prefix", "segments", "Incidence", "SparseMatrix", "incidence", "gather_sum",
]
