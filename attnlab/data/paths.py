"""Where dataset files are found when the user names no directory.

Two places, in this order:

1. the data directory ``$ATTNLAB_DATA_DIR`` (default ``$XDG_CACHE_HOME/attnlab``, i.e.
   ``~/.cache/attnlab``), laid out as ``planetoid/ind.NAME.*`` and ``tinyshakespeare/input.txt``:
   what ``attnlab download`` writes, or the user's own copies;
2. the copies shipped inside the package (``attnlab/data/bundled``: Cora and tiny Shakespeare; its
   README gives sources, terms and sha256 sums).

A directory or path given explicitly (a task kwarg, a ``load_planetoid`` argument) overrides both.
"""

from __future__ import annotations

import os
import pathlib

BUNDLED = pathlib.Path(__file__).resolve().parent / "bundled"
PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")


def data_dir() -> pathlib.Path:
  """``$ATTNLAB_DATA_DIR``, else ``$XDG_CACHE_HOME/attnlab`` (``~/.cache/attnlab``)."""
  if os.environ.get("ATTNLAB_DATA_DIR"):
    return pathlib.Path(os.environ["ATTNLAB_DATA_DIR"]).expanduser()
  cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(cache).expanduser() / "attnlab"


def planetoid_files(name: str) -> tuple[str, ...]:
  """The eight file names of Planetoid dataset ``name``: ind.NAME.{x,y,tx,ty,allx,ally,graph,test.index}."""
  return tuple(f"ind.{name}.{part}" for part in PLANETOID_PARTS)


def planetoid_dir(name: str) -> pathlib.Path:
  """The directory with all eight files of ``name``: the data directory's ``planetoid/``, else the
  bundled copy; FileNotFoundError saying how to get them otherwise."""
  candidates = (data_dir() / "planetoid", BUNDLED / "planetoid")
  for directory in candidates:
    if all((directory / f).is_file() for f in planetoid_files(name)):
      return directory
  raise FileNotFoundError(
      f"planetoid: the {name} files ind.{name}.* are not in {str(candidates[0])!r} ($ATTNLAB_DATA_DIR, "
      f"else ~/.cache/attnlab) and do not ship with attnlab; run `attnlab download planetoid {name}` "
      f"to fetch and verify them, or pass the directory holding them (task kwarg data_dir)")


def shakespeare_path() -> pathlib.Path:
  """``tinyshakespeare/input.txt`` in the data directory if there, else the bundled copy."""
  own = data_dir() / "tinyshakespeare" / "input.txt"
  return own if own.is_file() else BUNDLED / "tinyshakespeare" / "input.txt"
