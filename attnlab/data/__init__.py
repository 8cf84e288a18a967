"""Tasks and data: synthetic tasks with known answers and small real datasets (see ``base``).

Importing this package registers the built-in tasks under the registry kind ``task``:
``assoc_recall``, ``copy``, ``reverse``, ``sort``, ``selective_copy``, ``listops``,
``sort_of_clevr`` (synthetic),
``digits``, ``karate``, ``planetoid``, ``shakespeare`` (real). Cora and tiny Shakespeare ship with
the package (``paths``); ``download`` fetches the other Planetoid graphs, verified, when asked.
"""

from attnlab.data import clevr, digits, karate, listops, planetoid, shakespeare  # noqa: F401 (register)
from attnlab.data import synthetic  # noqa: F401 (register)
from attnlab.data.base import BOS, FAMILIES, PAD, SPLITS, Task, register_task, rng_for
from attnlab.data.graph import Graph, computation_subgraph
from attnlab.data.download import download_planetoid
from attnlab.data.planetoid import load_planetoid
from attnlab.data.safe_pickle import UnsafePickleError

__all__ = ["BOS", "FAMILIES", "PAD", "SPLITS", "Graph", "Task", "UnsafePickleError",
           "computation_subgraph", "download_planetoid", "load_planetoid", "register_task", "rng_for"]
