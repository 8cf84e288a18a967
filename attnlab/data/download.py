"""The verified downloader: ``attnlab download planetoid NAME`` (only ever run on request).

Fetches the original Planetoid files (Yang et al. 2016, as distributed with the reference GCN and
GAT code) from the Planetoid authors' repository into ``paths.data_dir()/planetoid``. Every file is
streamed to a hidden temporary file beside its destination, its sha256 checked against ``SHA256``
below, and only then renamed into place: an interrupted or corrupted download never leaves a file
that a loader would read. A file with no known sum is refused unless the caller passes
``allow_unverified=True`` (CLI: ``--allow_unverified``), and its sum is then reported.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import urllib.error
import urllib.request
from typing import Callable

from attnlab import results
from attnlab.data import paths

PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data"
DATASETS = ("cora", "citeseer", "pubmed")
_CHUNK = 1 << 16

# sha256 of every Planetoid file whose content is known (None: no known sum).
SHA256: dict[str, str | None] = {
    "ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    "ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "ind.cora.test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "ind.citeseer.x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
    "ind.citeseer.y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    "ind.citeseer.tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
    "ind.citeseer.ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
    "ind.citeseer.allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
    "ind.citeseer.ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
    "ind.citeseer.graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
    "ind.citeseer.test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    "ind.pubmed.x": "fbe9cb5c47200d1b7769a26e579be3b7130b556831f9d850e77c4c74f2599b33",
    "ind.pubmed.y": "e6c807633307a07ed659249006536a147c7999c797f11a2560752990181b41b3",
    "ind.pubmed.tx": "4eb5f5d0f30f26497eb0ac6ac9719d09c67e284f1ed0385c93f3ef27a671da3d",
    "ind.pubmed.ty": "ee2e0d4819d9fbcc403689c3bf2e49face401b605932f093bc58ab6461130fdd",
    "ind.pubmed.allx": None,
    "ind.pubmed.ally": "0c37bbe3b5014ec365e9d393cf4791925e5ed94fb194305d74f064a8d7b50f0e",
    "ind.pubmed.graph": "5b89f0036ca22909471f1e6558eb42fa06e0c730a577bde5b058b40638f81dc9",
    "ind.pubmed.test.index": "b101d421688bbaecbd82e8a18f1e282378d6830f3a37666f28ebc47f844341b5",
}


class DownloadError(ValueError):
  """A download that failed or gave other bytes than expected; nothing was written."""


def sha256_of(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(url: str, dest: pathlib.Path, sha256: str | None, *, timeout: float = 60.0) -> str:
  """Streams ``url`` to ``dest`` atomically (``results.atomic_write``); returns its sha256.

  Raises DownloadError (and leaves no file, ``dest`` or temporary) on an HTTP or network error, a
  transfer shorter than its Content-Length, or a sha256 other than ``sha256`` (when given).
  """
  digest = hashlib.sha256()

  def stream(out) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      declared, size = response.headers.get("Content-Length"), 0
      for chunk in iter(lambda: response.read(_CHUNK), b""):
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    if declared is not None and size != int(declared):
      raise DownloadError(f"{dest.name}: transfer from {url} ended after {size} of {declared} bytes")
    if sha256 is not None and digest.hexdigest() != sha256:
      raise DownloadError(f"{dest.name}: sha256 mismatch for {url}: expected {sha256}, got "
                          f"{digest.hexdigest()}; the file was not saved")

  try:
    results.atomic_write(dest, stream)
  except urllib.error.HTTPError as e:
    raise DownloadError(f"{dest.name}: {url} answered HTTP {e.code} {e.reason}") from None
  except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, IncompleteRead, resets
    raise DownloadError(f"{dest.name}: download from {url} failed ({e})") from None
  return digest.hexdigest()


def download_planetoid(name: str, directory: str | os.PathLike | None = None, *,
                       base_url: str = PLANETOID_URL, allow_unverified: bool = False,
                       sums: dict[str, str | None] | None = None,
                       log: Callable[[str], None] = print) -> pathlib.Path:
  """Fetches and verifies the eight files of Planetoid dataset ``name`` into ``directory``
  (default ``paths.data_dir()/planetoid``); files already there with the right sum are kept.

  ``sums`` maps file name to sha256 (default ``SHA256``). Returns the directory. Raises ValueError for
  an unknown name, DownloadError for a file with no known sum (unless ``allow_unverified``) before
  anything is fetched, and for any failed or mismatched transfer.
  """
  if name not in DATASETS:
    raise ValueError(f"download: unknown Planetoid dataset {name!r}; valid names: {', '.join(DATASETS)}")
  sums = SHA256 if sums is None else sums
  files = paths.planetoid_files(name)
  unknown = [f for f in files if sums.get(f) is None]
  if unknown and not allow_unverified:
    raise DownloadError(f"{', '.join(unknown)}: no known sha256 in attnlab, so the download cannot be "
                        f"verified; pass --allow_unverified (allow_unverified=True) to accept "
                        f"{'it' if len(unknown) == 1 else 'them'} unchecked")
  target = pathlib.Path(directory) if directory is not None else paths.data_dir() / "planetoid"
  target.mkdir(parents=True, exist_ok=True)
  for file in files:
    dest, want = target / file, sums.get(file)
    if dest.is_file() and (want is None or sha256_of(dest) == want):
      log(f"{dest}: present{'' if want is None else ', sha256 verified'}")
      continue
    got = fetch(f"{base_url.rstrip('/')}/{file}", dest, want)
    log(f"{dest}: " + ("sha256 verified" if want is not None else
                       f"NOT VERIFIED (no known sum; accepted on request), sha256 {got}"))
  return target
