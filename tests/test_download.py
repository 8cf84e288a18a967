"""Shipped datasets and the verified downloader, against a local HTTP server (127.0.0.1 only)."""

import hashlib
import http.server
import os
import pathlib
import re
import subprocess
import sys
import threading
import tomllib

import numpy as np
import pytest

from attnlab.data import download, load_planetoid, paths

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORA = {f: (paths.BUNDLED / "planetoid" / f).read_bytes() for f in paths.planetoid_files("cora")}


def sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


class Server:
  """Serves ``files[name] = (body, how)`` at /name; how: 'ok', 'truncate' (half the body, then the
  connection closes under a full Content-Length) or 404 for names it lacks. Counts requests."""

  def __init__(self):
    self.files, self.requests = {}, []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[-1]
        server.requests.append(name)
        if name not in server.files:
          self.send_error(404, "Not Found")
          return
        body, how = server.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if how == "truncate" else body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
  s = Server()
  yield s
  s.httpd.shutdown()
  s.httpd.server_close()


def leftovers(directory):
  return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------- shipped datasets

def test_shipped_files_match_the_sums_in_the_code_and_their_readme():
  readme = (paths.BUNDLED / "README.md").read_text()
  listed = dict((path, digest) for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
  shipped = sorted(str(p.relative_to(paths.BUNDLED)) for p in paths.BUNDLED.rglob("*")
                   if p.is_file() and p.name != "README.md")
  assert sorted(listed) == shipped and len(shipped) == 9
  for rel in shipped:
    digest = sha((paths.BUNDLED / rel).read_bytes())
    assert digest == listed[rel], rel
    if rel.startswith("planetoid/"):
      assert download.SHA256[rel.split("/")[1]] == digest


def test_package_data_globs_cover_every_shipped_file():
  """An installed (not only a checked-out) attnlab has the datasets: pyproject lists them all."""
  globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
  base = ROOT / "attnlab" / "data"
  covered = {p for g in globs["attnlab.data"] for p in base.glob(g) if p.is_file()}
  assert covered == {p for p in paths.BUNDLED.rglob("*") if p.is_file()}


def test_defaults_find_the_shipped_copies_and_the_data_dir_overrides(tmp_path, monkeypatch):
  monkeypatch.setenv("ATTNLAB_DATA_DIR", str(tmp_path))
  assert paths.planetoid_dir("cora") == paths.BUNDLED / "planetoid"
  assert paths.shakespeare_path() == paths.BUNDLED / "tinyshakespeare" / "input.txt"
  (tmp_path / "planetoid").mkdir()
  for name, data in CORA.items():
    if name != "ind.cora.y":  # an incomplete set is not taken
      (tmp_path / "planetoid" / name).write_bytes(data)
  assert paths.planetoid_dir("cora") == paths.BUNDLED / "planetoid"
  (tmp_path / "planetoid" / "ind.cora.y").write_bytes(CORA["ind.cora.y"])
  assert paths.planetoid_dir("cora") == tmp_path / "planetoid"
  (tmp_path / "tinyshakespeare").mkdir()
  (tmp_path / "tinyshakespeare" / "input.txt").write_text("to be or not to be, " * 200)
  from attnlab import registry  # the task follows the data directory too
  own = registry.get("task", "shakespeare")(seq_len=8, eval_size=4)
  assert own.tokens[2:] == tuple(sorted(set("to be or n,")))
  monkeypatch.delenv("ATTNLAB_DATA_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert paths.data_dir() == tmp_path / "xdg" / "attnlab"


# ------------------------------------------------------------------------------ downloader

def test_download_verifies_and_a_second_run_fetches_nothing(server, tmp_path):
  server.files = {name: (data, "ok") for name, data in CORA.items()}
  logs = []
  out = download.download_planetoid("cora", tmp_path, base_url=server.url, log=logs.append)
  assert out == tmp_path and sorted(server.requests) == sorted(CORA)
  assert all((tmp_path / n).read_bytes() == d for n, d in CORA.items()) and leftovers(tmp_path) == []
  assert len(logs) == 8 and all(line.endswith("sha256 verified") for line in logs)
  a, b = load_planetoid("cora", tmp_path), load_planetoid("cora")
  np.testing.assert_array_equal(a.features, b.features)
  np.testing.assert_array_equal(a.edges, b.edges)
  download.download_planetoid("cora", tmp_path, base_url=server.url, log=logs.append)
  assert len(server.requests) == 8 and all("present, sha256 verified" in line for line in logs[8:])


def test_a_wrong_checksum_is_refused_naming_the_file_and_both_sums(server, tmp_path):
  bad = bytearray(CORA["ind.cora.tx"])
  bad[100] ^= 1
  server.files = {**{n: (d, "ok") for n, d in CORA.items()}, "ind.cora.tx": (bytes(bad), "ok")}
  with pytest.raises(download.DownloadError) as e:
    download.download_planetoid("cora", tmp_path, base_url=server.url, log=lambda _: None)
  message = str(e.value)
  assert "ind.cora.tx" in message and download.SHA256["ind.cora.tx"] in message and sha(bytes(bad)) in message
  assert not (tmp_path / "ind.cora.tx").exists() and leftovers(tmp_path) == []
  with pytest.raises(FileNotFoundError, match=r"missing file .*ind\.cora\.tx"):
    load_planetoid("cora", tmp_path)  # the files before it are whole; the bad one never landed


@pytest.mark.parametrize("how, match", [
    ("truncate", r"ind\.cora\.x: (transfer|download) from .* (ended|failed)"),
    ("missing", r"ind\.cora\.x: .* answered HTTP 404")])
def test_a_truncated_or_missing_transfer_leaves_no_file(server, tmp_path, how, match):
  server.files = {} if how == "missing" else {"ind.cora.x": (CORA["ind.cora.x"], how)}
  with pytest.raises(download.DownloadError, match=match):
    download.fetch(f"{server.url}/ind.cora.x", tmp_path / "ind.cora.x", download.SHA256["ind.cora.x"])
  assert list(tmp_path.iterdir()) == []


def test_a_file_without_a_known_sum_needs_an_explicit_flag(server, tmp_path):
  files = {f: f"payload of {f}".encode() for f in paths.planetoid_files("pubmed")}
  sums = {f: (None if f == "ind.pubmed.allx" else sha(d)) for f, d in files.items()}
  server.files = {f: (d, "ok") for f, d in files.items()}
  with pytest.raises(download.DownloadError, match=r"ind\.pubmed\.allx: no known sha256.*--allow_unverified"):
    download.download_planetoid("pubmed", tmp_path, base_url=server.url, sums=sums)
  assert server.requests == [] and list(tmp_path.iterdir()) == []  # refused before fetching anything
  logs = []
  download.download_planetoid("pubmed", tmp_path, base_url=server.url, sums=sums, allow_unverified=True,
                              log=logs.append)
  assert all((tmp_path / f).read_bytes() == d for f, d in files.items())
  assert [line for line in logs if "NOT VERIFIED" in line] == [
      f"{tmp_path / 'ind.pubmed.allx'}: NOT VERIFIED (no known sum; accepted on request), "
      f"sha256 {sha(files['ind.pubmed.allx'])}"]
  assert download.SHA256["ind.pubmed.allx"] is None and sum(v is None for v in download.SHA256.values()) == 1


def test_cli_downloads_into_the_data_dir_and_refuses_unknown_sums(server, tmp_path):
  server.files = {name: (data, "ok") for name, data in CORA.items()}
  env = {**os.environ, "ATTNLAB_DATA_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
  run = lambda *a: subprocess.run([sys.executable, "-m", "attnlab.cli", "download", *a], env=env,
                                  capture_output=True, text=True, timeout=120, cwd=ROOT)
  out = run("planetoid", "cora", f"--base_url={server.url}")
  assert out.returncode == 0, out.stderr
  assert out.stdout.count("sha256 verified") == 8
  assert sorted(p.name for p in (tmp_path / "planetoid").iterdir()) == sorted(CORA)
  out = run("planetoid", "pubmed", f"--base_url={server.url}")
  assert out.returncode == 2 and "ind.pubmed.allx: no known sha256" in out.stderr
  assert "Traceback" not in out.stderr and len(server.requests) == 8
