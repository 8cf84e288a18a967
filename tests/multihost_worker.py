"""``attnlab`` with a record of the files it writes: ``python tests/multihost_worker.py RECORD ARGS...``
runs ``attnlab ARGS...`` (tests/test_multihost.py starts two of them as the processes of one run)
and writes to RECORD, as JSON, every path it opened for writing, renamed, removed or made (Python's
audit events; files written by C++ libraries, e.g. orbax's tensorstore, are not seen)."""

import json
import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main():
  record, sys.argv = sys.argv[1], ["attnlab"] + sys.argv[2:]
  seen = []

  def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
      path, mode, flags = args
      if (mode and any(c in mode for c in "wax+")) or (not mode and flags & _WRITE_FLAGS):
        seen.append(os.fsdecode(path))
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
      seen.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else repr(args[0]))

  sys.addaudithook(hook)
  try:
    runpy.run_module("attnlab.cli", run_name="__main__")
  finally:
    with open(record + ".tmp", "w") as f:
      json.dump(sorted(set(seen)), f)
    os.replace(record + ".tmp", record)


if __name__ == "__main__":
  main()
