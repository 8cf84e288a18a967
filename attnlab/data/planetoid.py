"""Planetoid citation graphs (Cora, Citeseer, Pubmed; Yang et al. 2016) with the standard split.

Reads the eight files ``ind.NAME.{x,y,tx,ty,allx,ally,graph,test.index}`` from a directory the user
gives, else from ``paths.planetoid_dir`` (the data directory, then the Cora copy shipped with
attnlab; ``attnlab download planetoid NAME`` fetches the others), through the restricted unpickler of
``safe_pickle`` (the files are pickles from outside), and assembles the graph exactly as Kipf &
Welling's ``load_data``:

* nodes = ``allx`` rows (train + unlabelled) followed by the test rows ``tx``; the test rows are then
  moved to the node ids listed in ``test.index``;
* Citeseer has test ids with no test row (isolated nodes missing from ``tx``): the test block is padded
  with all-zero feature and label rows to span min..max of ``test.index`` (those nodes get label 0 and
  belong to no split);
* train = the first ``len(y)`` nodes, val = the next 500, test = the sorted ``test.index``;
* edges from the ``graph`` adjacency lists: both directions, no self loops, deduplicated.

``normalize_features=True`` scales feature rows to sum 1 (GCN and GAT do).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from attnlab.data import paths, safe_pickle
from attnlab.data.base import check_choice, register_task
from attnlab.data.graph import Graph, GraphTask, row_normalize, undirected_edges

DATASETS = ("cora", "citeseer", "pubmed")
PARTS = paths.PLANETOID_PARTS[:-1]  # the pickles (test.index is text)
NUM_VAL = 500


def _file(directory: pathlib.Path, name: str, part: str) -> pathlib.Path:
  path = directory / f"ind.{name}.{part}"
  if not path.is_file():
    raise FileNotFoundError(f"planetoid: missing file {str(path)!r}; {name} needs the Planetoid files "
                            f"ind.{name}.{{{','.join(PARTS)},test.index}} in {str(directory)!r}")
  return path


def _dense(obj: object, path: pathlib.Path, one_hot: bool) -> np.ndarray:
  """A loaded x/tx/allx (CSR or array) or y/ty/ally (one-hot array) as a dense 2-d array."""
  try:
    if isinstance(obj, safe_pickle.SparseCSR):
      array = obj.toarray(np.float32)
    elif isinstance(obj, np.ndarray) and obj.ndim == 2 and obj.dtype != object:
      array = obj.astype(np.float32)
    else:
      raise ValueError(f"expected a 2-d {'one-hot array' if one_hot else 'feature matrix'}, "
                       f"got {type(obj).__name__}")
  except ValueError as e:
    raise ValueError(f"planetoid: {str(path)!r}: {e}") from None
  except MemoryError as e:
    raise ValueError(f"planetoid: {str(path)!r}: the matrix does not fit in memory ({e})") from None
  return array


def _test_index(path: pathlib.Path) -> np.ndarray:
  try:
    index = np.array([int(line) for line in path.read_text().split()], np.int64)
  except ValueError as e:
    raise ValueError(f"planetoid: {str(path)!r} must hold one integer node id per line ({e})") from None
  if index.size == 0:
    raise ValueError(f"planetoid: {str(path)!r} is empty; expected one test node id per line")
  return index


def load_planetoid(name: str, directory: str | os.PathLike | None = None, *,
                   normalize_features: bool = False) -> Graph:
  """Loads Planetoid dataset ``name`` ('cora', 'citeseer' or 'pubmed') from ``directory`` (default:
  ``paths.planetoid_dir(name)``).

  Returns:
    A ``Graph``: features float32 [N, F] (raw, or rows summing to 1 with ``normalize_features``),
    labels int32 [N], edges int32 [2, E] (both directions, no self loops), train/val/test_index.
    Cora: N=2708, F=1433, 7 classes, 140/500/1000 split, E=10556.

  Raises:
    ValueError: unknown name, ``directory`` not a directory, a file that is truncated, inconsistent
      or not a data file (a refused global: ``safe_pickle.UnsafePickleError``).
    FileNotFoundError: one of the eight files is missing (the message names it and, with no
      ``directory``, the download command).
  """
  if name not in DATASETS:
    raise ValueError(f"load_planetoid: unknown dataset name {name!r}; valid names: {', '.join(DATASETS)}")
  directory = paths.planetoid_dir(name) if directory is None else pathlib.Path(directory)
  if not directory.is_dir():
    raise ValueError(f"planetoid: data directory {str(directory)!r} does not exist or is not a directory; "
                     f"expected the Planetoid files ind.{name}.{{{','.join(PARTS)},test.index}}")
  files = {part: _file(directory, name, part) for part in PARTS + ("test.index",)}
  loaded = {part: safe_pickle.load(files[part]) for part in PARTS}
  x, tx, allx = (_dense(loaded[p], files[p], one_hot=False) for p in ("x", "tx", "allx"))
  y, ty, ally = (_dense(loaded[p], files[p], one_hot=True) for p in ("y", "ty", "ally"))
  graph = loaded["graph"]
  if not isinstance(graph, dict):
    raise ValueError(f"planetoid: {str(files['graph'])!r}: expected a dict node -> neighbour list, "
                     f"got {type(graph).__name__}")
  test_reorder = _test_index(files["test.index"])
  test_range = np.sort(test_reorder)

  def fail(what: str) -> ValueError:
    return ValueError(f"planetoid: the {name} files in {str(directory)!r} are inconsistent: {what}")

  if not (x.shape[1] == tx.shape[1] == allx.shape[1]):
    raise fail(f"feature widths x {x.shape[1]}, tx {tx.shape[1]}, allx {allx.shape[1]} differ")
  if not (y.shape[1] == ty.shape[1] == ally.shape[1]) or len(y) != len(x) or len(ty) != len(tx) \
     or len(ally) != len(allx):
    raise fail("label arrays y/ty/ally do not match x/tx/allx")
  if len(test_reorder) != len(tx):
    raise fail(f"test.index has {len(test_reorder)} ids but tx has {len(tx)} rows")
  if name == "citeseer":  # pad isolated test nodes (no row in tx) with zeros, as Kipf & Welling
    span = test_range[-1] - test_range[0] + 1
    if span * tx.shape[1] > safe_pickle.MAX_DENSE_ELEMENTS:
      raise fail(f"test.index ids span {span:,} nodes ({test_range[0]}..{test_range[-1]}), too many "
                 f"to pad with zero feature rows")
    tx_full = np.zeros((span, tx.shape[1]), np.float32)
    ty_full = np.zeros((span, ty.shape[1]), np.float32)
    tx_full[test_range - test_range[0]] = tx
    ty_full[test_range - test_range[0]] = ty
    tx, ty = tx_full, ty_full
  features = np.concatenate([allx, tx])  # [N, F]
  onehot = np.concatenate([ally, ty])  # [N, C]
  n = len(features)
  if test_range[0] < 0 or test_range[-1] >= n:
    raise fail(f"test.index ids must lie in [0, {n}), got [{test_range[0]}, {test_range[-1]}]")
  if len(y) + NUM_VAL > len(allx):
    raise fail(f"allx has {len(allx)} rows, fewer than {len(y)} train + {NUM_VAL} val nodes")
  features[test_reorder] = features[test_range]
  onehot[test_reorder] = onehot[test_range]
  try:
    pairs = [(int(u), int(v)) for u, neighbours in graph.items() for v in neighbours]
    edges = undirected_edges(np.array(pairs, np.int64).reshape(-1, 2), n)
  except (TypeError, ValueError) as e:
    raise ValueError(f"planetoid: {str(files['graph'])!r}: bad adjacency lists ({e})") from None
  if normalize_features:
    features = row_normalize(features)
  return Graph(features=features.astype(np.float32), labels=onehot.argmax(1).astype(np.int32), edges=edges,
               train_index=np.arange(len(y)), val_index=np.arange(len(y), len(y) + NUM_VAL),
               test_index=test_range, num_classes=onehot.shape[1])


@register_task("planetoid")
def make_planetoid(*, dataset: str = "cora", data_dir: str | None = None,
                   normalize_features: bool = True, sparse_features: bool = False,
                   subgraph_hops: int = 0) -> GraphTask:
  """Planetoid node classification. Kwargs: dataset (cora | citeseer | pubmed), data_dir (the
  directory of the ind.* files; default: the data directory, else the bundled Cora),
  normalize_features (row-normalise, as GAT), sparse_features (the batch's ``GraphBatch`` holds a
  ``SparseMatrix`` of the stored entries instead of dense features), subgraph_hops (0: every batch
  is the whole graph; k: each split's k-hop computation subgraph, exact for models of at most k
  message-passing layers); see attnlab.data.graph."""
  check_choice("planetoid", "dataset", dataset, DATASETS)
  check_choice("planetoid", "normalize_features", normalize_features, (True, False))
  check_choice("planetoid", "sparse_features", sparse_features, (True, False))
  return GraphTask("planetoid", load_planetoid(dataset, data_dir, normalize_features=normalize_features),
                   sparse_features=sparse_features, subgraph_hops=subgraph_hops)
