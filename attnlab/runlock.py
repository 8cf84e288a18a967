"""One process per run directory: ``hold(DIR)`` locks ``DIR/.lock`` or raises ``RunBusy``.

The lock is an ``flock`` on ``DIR/.lock``, which the kernel releases when its process ends (kill -9
included); the file holds the owner's pid and host for the message a second process gets. A lock
file left by a process that died is stale: the next process takes it over with a warning. Where the
filesystem has no ``flock``, the recorded owner is checked instead (busy while that pid is alive on
this host, or when it is on another host). Holding is reentrant within a process: a sweep holds a
run's directory while ``train_and_evaluate`` runs in it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time
from typing import Any, Iterator

from absl import logging

from attnlab import results

LOCK_NAME = ".lock"
_held: set[pathlib.Path] = set()  # directories this process holds
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunBusy(RuntimeError):
  """Another live process holds the run directory."""


def _owner(text: str) -> dict[str, Any]:
  try:
    owner = json.loads(text)
  except ValueError:
    return {}
  return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
  return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"


def _alive(owner: dict[str, Any]) -> bool:
  """Whether the recorded owner may still run (unknown hosts and pids count as alive)."""
  if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
    return True
  try:
    os.kill(owner["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _lock(fd: int, path: pathlib.Path) -> None:
  """flock ``fd`` without waiting; RunBusy naming the owner if another process holds it."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    raise RunBusy(_busy_message(path)) from None
  except OSError as e:
    if e.errno not in _NO_FLOCK:
      raise
    owner = _owner(os.pread(fd, 4096, 0).decode(errors="replace"))
    if owner and owner.get("pid") != os.getpid() and _alive(owner):
      raise RunBusy(_busy_message(path)) from None


def _busy_message(path: pathlib.Path) -> str:
  try:
    owner = _owner(path.read_text())
  except OSError:
    owner = {}
  return (f"run directory {str(path.parent)!r} is in use by {_describe(owner)} (lock file {path}); "
          f"wait for it to finish, or delete the lock file if that process is gone")


@contextlib.contextmanager
def hold(directory: pathlib.Path) -> Iterator[None]:
  """Holds ``directory`` (which must exist) for this process while the block runs."""
  directory = pathlib.Path(directory).resolve()
  if directory in _held:  # held further out in this process
    yield
    return
  path = directory / LOCK_NAME
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      _lock(fd, path)
      same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not unlinked by its last holder meanwhile
    except FileNotFoundError:
      same = False
    except BaseException:
      os.close(fd)
      raise
    if same:
      break
    os.close(fd)
  try:
    previous = _owner(os.pread(fd, 4096, 0).decode(errors="replace"))
    if previous:
      logging.warning("%s: took over the stale lock of %s (no longer running)", directory,
                      _describe(previous))
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
    with results.writing(path):
      os.ftruncate(fd, 0)
      os.pwrite(fd, me, 0)
    _held.add(directory)
    yield
  finally:
    _held.discard(directory)
    with contextlib.suppress(FileNotFoundError):
      path.unlink()
    os.close(fd)
