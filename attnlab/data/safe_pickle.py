"""A restricted unpickler for data files from outside (the Planetoid pickles).

``pickle.load`` runs whatever callables a pickle names: a crafted file can call ``os.system``.
``load`` admits only the globals these data files need -- NumPy's array reconstruction
(``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``), a few builtin containers
(``list``/``dict``/``set``/``tuple``, ``collections.defaultdict``/``OrderedDict``) and
``scipy.sparse`` CSR matrices -- and refuses every other global before anything is called.

SciPy is not needed: a pickled ``csr_matrix`` becomes a :class:`SparseCSR` stand-in that only records
the pickled attributes (``data``, ``indices``, ``indptr``, shape); :meth:`SparseCSR.toarray` rebuilds
the dense matrix with NumPy. Python 2 pickles are read with ``encoding="latin1"`` (as NumPy requires).
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
from typing import Any

import numpy as np


# Largest dense matrix SparseCSR.toarray builds (1 GiB of float32): over 20x the largest Planetoid
# matrix (Citeseer's 3327 x 3703), so a declared shape beyond it is refused before allocating.
MAX_DENSE_ELEMENTS = 2 ** 28


class UnsafePickleError(ValueError):
  """A pickle names a global that is not admitted (nothing from it was called)."""


class SparseCSR:
  """Stand-in for a pickled ``scipy.sparse.csr_matrix``: holds its state, builds nothing."""

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, dict):
      raise pickle.UnpicklingError(f"csr_matrix state must be a dict, got {type(state).__name__}")
    self.state = state

  @property
  def shape(self) -> tuple[int, int]:
    shape = self.state.get("_shape", self.state.get("shape"))
    if not (isinstance(shape, tuple) and len(shape) == 2
            and all(isinstance(s, int) and s >= 0 for s in shape)):
      raise ValueError(f"csr_matrix has no valid 2-d shape (got {shape!r})")
    return shape

  def toarray(self, dtype: Any = np.float32) -> np.ndarray:
    """The dense matrix [rows, cols] (duplicate entries summed, as SciPy does); a ValueError for a
    declared shape over ``MAX_DENSE_ELEMENTS`` entries."""
    rows, cols = self.shape
    if rows * cols > MAX_DENSE_ELEMENTS:
      raise ValueError(f"csr_matrix declares shape {rows}x{cols} ({rows * cols:,} entries), more than "
                       f"the {MAX_DENSE_ELEMENTS:,} a dense feature matrix may have")
    fmt = self.state.get("format", "csr")
    if fmt != "csr":
      raise ValueError(f"sparse matrix has format {fmt!r}, expected 'csr'")
    try:
      data = np.asarray(self.state["data"])
      indices = np.asarray(self.state["indices"]).astype(np.int64)
      indptr = np.asarray(self.state["indptr"]).astype(np.int64)
    except KeyError as e:
      raise ValueError(f"csr_matrix lacks its {e.args[0]!r} array") from None
    nnz = len(indices)
    if (indptr.shape != (rows + 1,) or indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0)
        or data.shape != (nnz,) or (nnz and (indices.min() < 0 or indices.max() >= cols))):
      raise ValueError(f"csr_matrix arrays are inconsistent with its shape {rows}x{cols}")
    dense = np.zeros((rows, cols), dtype)  # [rows, cols]
    row_of = np.repeat(np.arange(rows), np.diff(indptr))  # [nnz]
    np.add.at(dense, (row_of, indices), data.astype(dtype))
    return dense


def _admitted() -> dict[tuple[str, str], Any]:
  reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy.(_)core.multiarray._reconstruct
  scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
  table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
  for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    table[(core, "_reconstruct")] = reconstruct
    table[(core, "scalar")] = scalar
  for module in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse"):
    table[(module, "csr_matrix")] = SparseCSR
  for module in ("__builtin__", "builtins"):  # Python 2 and 3 names
    for builtin in (list, dict, set, frozenset, tuple):
      table[(module, builtin.__name__)] = builtin
  table[("collections", "defaultdict")] = collections.defaultdict
  table[("collections", "OrderedDict")] = collections.OrderedDict
  table[("_codecs", "encode")] = codecs.encode  # bytes in protocol-2 pickles written by Python 3
  return table


_ADMITTED = _admitted()


class _RefusedGlobal(Exception):
  pass


class _Unpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ADMITTED[(module, name)]
    except KeyError:
      raise _RefusedGlobal(f"{module}.{name}") from None


def load(path: str | os.PathLike) -> Any:
  """Unpickles ``path`` admitting only the NumPy/SciPy-CSR/builtin globals above.

  Raises:
    FileNotFoundError: ``path`` is missing.
    UnsafePickleError: the pickle names any other global (refused before it is called).
    ValueError: the file is truncated or not a pickle.
  """
  with open(path, "rb") as f:
    try:
      return _Unpickler(f, encoding="latin1").load()
    except _RefusedGlobal as e:
      raise UnsafePickleError(
          f"{os.fspath(path)}: refused to unpickle global {e.args[0]!r}; only NumPy arrays, SciPy CSR "
          f"matrices and builtin containers are admitted (this is not a plain data file)") from None
    except Exception as e:  # truncated/corrupt: EOFError, UnpicklingError, struct/numpy errors, ...
      raise ValueError(f"{os.fspath(path)}: truncated or corrupt pickle ({type(e).__name__}: {e})") from e
