"""Tasks and data: determinism, labels checked by independent solvers, the batch contract of every
registered task, Cora against a plain reference, the restricted unpickler, and bad input."""

import functools
import os
import pickle
import re
import shutil
import sys
import warnings
from collections import Counter

import jax
import numpy as np
import pytest
from flax import nnx

from attnlab import AttentionSpec, losses, registry
from attnlab.data import UnsafePickleError, computation_subgraph, load_planetoid, paths, safe_pickle
from attnlab.data.base import epoch_indices
from attnlab.graph_batch import GraphBatch, SparseMatrix

PLANETOID = paths.BUNDLED / "planetoid"
SHAKESPEARE = paths.BUNDLED / "tinyshakespeare" / "input.txt"
TASKS = registry.names("task")  # every registered task: a new one is tested with no edit here
CORA_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")


@functools.cache
def task(name, **kwargs):
  return registry.get("task", name)(**kwargs)


def rows(name, n=64, **kwargs):
  """A train batch and the val set of a task, as one list of (inputs, label/labels) pairs."""
  t = task(name, **kwargs)
  out = []
  for b in (t.batch("train", 5, n, seed=3), t.eval_set("val")):
    out += list(zip(b["inputs"].tolist(), b["label" if "label" in b else "labels"].tolist()))
  return t, out


def unpad(seq):
  return [s for s in seq if s != 0]


# ------------------------------------------------------------------------------- determinism

def test_builtin_tasks_registered():
  import attnlab.data  # its docstring names the built-in tasks
  named = re.findall(r"``(\w+)``", attnlab.data.__doc__.split("``task``:")[1].split("Cora")[0])
  assert named and set(registry.names("task")) >= set(named)


@pytest.mark.parametrize("name", TASKS)
def test_registered_tasks_build_with_their_default_kwargs(name):
  t = task(name)
  assert t.name == name and t.family in ("classifier", "seq2seq", "lm", "node_classifier")


@pytest.mark.parametrize("name", TASKS)
def test_train_batches_deterministic_in_seed_and_step(name):
  t = task(name)
  if t.family == "node_classifier":  # one fixed batch (the graph) per split, whatever the seed
    np.testing.assert_array_equal(t.batch("train", 7, 8, seed=1)["mask"],
                                  t.batch("train", 0, 8, seed=2)["mask"])
    return
  a, b = t.batch("train", 7, 8, seed=1), t.batch("train", 7, 8, seed=1)
  c, d = t.batch("train", 7, 8, seed=2), t.batch("train", 8, 8, seed=1)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["inputs"], c["inputs"])
  assert not np.array_equal(a["inputs"], d["inputs"])


@pytest.mark.parametrize("name", TASKS)
def test_eval_sets_fixed_and_chunked(name):
  t = task(name)
  for split in ("val", "test"):
    full = t.eval_set(split)
    n = len(next(iter(full.values())))
    size = 1000 if t.family == "node_classifier" else 7
    chunks = [t.batch(split, i, size, seed=s) for s, i in zip(range(100), range(t.num_batches(split, size)))]
    for k in full:  # (a node classifier's graph is a pytree: compared leaf by leaf)
      jax.tree.map(np.testing.assert_array_equal, np.concatenate([c[k] for c in chunks])
                   if t.family != "node_classifier" else chunks[0][k], full[k])
    if t.family != "node_classifier":
      assert n == t.eval_size and t.num_batches(split, size) == -(-n // size)
      with pytest.raises(ValueError, match=f"step {t.num_batches(split, size)} is past the {split} set"):
        t.batch(split, t.num_batches(split, size), size)
  if t.family != "node_classifier":
    assert not np.array_equal(t.eval_set("val")["inputs"], t.eval_set("test")["inputs"])


def test_epoch_indices_visit_every_example_once_per_epoch():
  idx = np.concatenate([epoch_indices(10, s, 4, seed=0) for s in range(5)])  # 20 = two epochs
  assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
  assert not np.array_equal(idx[:10], idx[10:])


# ---------------------------------------------------------------------- independent solvers

def test_assoc_recall_matches_a_dict():
  t, data = rows("assoc_recall", num_pairs=5, num_keys=6, num_values=7)
  v0 = t.tokens.index("v0")
  for x, label in data:
    pairs = x[:-2]
    keys = pairs[0::2]
    assert len(set(keys)) == len(keys) == 5 and t.tokens[x[-2]] == "?"
    table = dict(zip(keys, pairs[1::2]))
    assert label == table[x[-1]] - v0
  assert len({label for _, label in data}) == 7  # every value class occurs


@pytest.mark.parametrize("name, solve", [("copy", lambda s: s), ("reverse", lambda s: s[::-1]),
                                         ("sort", sorted)])
@pytest.mark.parametrize("min_length", [None, 2])
def test_copy_reverse_sort_match_python(name, solve, min_length):
  t, data = rows(name, length=9, vocab=5, min_length=min_length)
  lengths = set()
  for x, y in data:
    real = unpad(x)
    assert x[:len(real)] == real  # PADs only at the end
    assert y == solve(real) + [0] * (9 - len(real))
    lengths.add(len(real))
  assert lengths == ({9} if min_length is None else set(range(2, 10)))


def test_selective_copy_matches_a_filter():
  t, data = rows("selective_copy", length=20, num_marked=5, vocab=4, noise_vocab=3)
  content = {i for i, s in enumerate(t.tokens) if s.startswith("s")}
  for x, y in data:
    assert [tok for tok in x if tok in content] == y and len(y) == 5
    assert 0 not in x


def _listops_value(tokens, pos=0):
  """Recursive-descent evaluation of the token strings: returns (value, next position)."""
  tok = tokens[pos]
  if tok.isdigit():
    return int(tok), pos + 1
  args, pos = [], pos + 1
  while tokens[pos] != "]":
    value, pos = _listops_value(tokens, pos)
    args.append(value)
  assert len(args) >= 2
  s = sorted(args)
  mid = len(s) // 2
  value = {"[MAX": max(s), "[MIN": min(s), "[SM": sum(s) % 10,
           "[MED": s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2}[tok]
  return value, pos + 1


def test_listops_matches_a_recursive_evaluator():
  t, data = rows("listops", n=128, max_depth=4, max_args=4, max_length=60, min_length=8)
  for x, label in data:
    tokens = [t.tokens[i] for i in unpad(x)]
    value, end = _listops_value(tokens)
    assert end == len(tokens) and 8 <= len(tokens) <= 60
    assert value == label
  assert len({label for _, label in data}) == 10


# ------------------------------------------------------------------------- batch contract

def _check_tokens(x, vocab_size):
  assert x.dtype == np.int32
  assert np.all((x == 0) | ((x >= 2) & (x < vocab_size)))


@pytest.mark.parametrize("name", TASKS)
def test_every_registered_task_yields_declared_batches(name):
  t = task(name)
  spec = t.spec
  assert t.family in ("classifier", "seq2seq", "lm", "node_classifier")
  assert t.tokens is None or len(t.tokens) == spec["vocab_size"]
  for split in ("train", "val", "test"):
    b = t.batch(split, 0, 4, seed=0)
    if t.family == "classifier":
      vqa = {"question", "relational"} if "question_dim" in spec else set()
      assert set(b) == {"inputs", "label"} | vqa
      assert b["label"].shape == (4,) and b["label"].dtype == np.int32
      assert b["label"].min() >= 0 and b["label"].max() < spec["num_classes"]
      if vqa:
        assert b["question"].shape == (4, spec["question_dim"]) and b["question"].dtype == np.float32
        assert b["relational"].shape == (4,) and b["relational"].dtype == np.bool_
      if "image_size" in spec:
        s = spec["image_size"]
        assert b["inputs"].shape == (4, s, s, spec["channels"])
        assert b["inputs"].dtype == np.float32 and 0 <= b["inputs"].min() and b["inputs"].max() <= 1
      elif "vocab_size" in spec:
        assert b["inputs"].shape == (4, spec["seq_len"])
        _check_tokens(b["inputs"], spec["vocab_size"])
      else:
        assert b["inputs"].shape == (4, spec["seq_len"], spec["input_dim"])
        assert b["inputs"].dtype == np.float32 and 0 <= b["inputs"].min() and b["inputs"].max() <= 1
    elif t.family == "seq2seq":
      assert set(b) == {"inputs", "labels"}
      assert b["inputs"].shape == (4, spec["seq_len"]) and b["labels"].shape == (4, spec["label_len"])
      _check_tokens(b["inputs"], spec["vocab_size"])
      _check_tokens(b["labels"], spec["vocab_size"])
    elif t.family == "lm":
      assert set(b) == {"inputs", "labels"}
      assert b["inputs"].shape == b["labels"].shape == (4, spec["seq_len"])
      _check_tokens(b["inputs"], spec["vocab_size"])
      np.testing.assert_array_equal(b["inputs"][:, 1:], b["labels"][:, :-1])
    else:
      n = spec["num_nodes"]
      assert set(b) == {"graph", "labels", "mask"} and isinstance(b["graph"], GraphBatch)
      g = b["graph"]
      assert len(g.layers) == 1  # the whole graph: one incidence for every layer
      inc = g.layer(1)  # the edges plus one self loop per node
      loops = np.arange(n)
      want = zip(g.edges[0].tolist() + loops.tolist(), g.edges[1].tolist() + loops.tolist())
      got = zip(np.asarray(inc.in_index).tolist(), np.asarray(inc.out_index).tolist())
      assert sorted(got) == sorted(want)
      assert g.features.shape == (n, spec["num_features"]) and g.features.dtype == np.float32
      assert g.edges.dtype == np.int32 and g.edges.shape[0] == 2
      assert g.edges.min() >= 0 and g.edges.max() < n
      assert b["labels"].shape == (n,) and b["labels"].dtype == np.int32
      assert b["labels"].min() >= 0 and b["labels"].max() < spec["num_classes"]
      assert b["mask"].shape == (n,) and b["mask"].dtype == bool and b["mask"].any()
  if t.family == "node_classifier":
    masks = np.stack([t.batch(s, 0, 1)["mask"] for s in ("train", "val", "test")])
    assert masks.sum(0).max() == 1  # disjoint
    for s, seed in (("train", 5), ("test", 9)):
      np.testing.assert_array_equal(t.batch(s, 3, 1, seed=seed)["mask"], t.batch(s, 0, 1)["mask"])


def test_digits_split_is_a_stratified_partition():
  from sklearn.datasets import load_digits
  data = load_digits()
  t = task("digits")
  splits = {"train": t.batch("train", 0, 1077, seed=0), "val": t.eval_set("val"), "test": t.eval_set("test")}
  seen = Counter()
  for b in splits.values():
    seen.update((x.tobytes(), int(y)) for x, y in zip(b["inputs"], b["label"]))
  expected = Counter(((img / 16.0).astype(np.float32).tobytes(), int(y))
                     for img, y in zip(data.images, data.target))
  assert seen == expected  # train (one full epoch), val and test partition the dataset
  counts = np.bincount(data.target) * 360 / len(data.target)
  for s in ("val", "test"):
    assert np.all(np.abs(np.bincount(splits[s]["label"], minlength=10) - counts) <= 1)
  p = task("digits", layout="patches", patch_size=4).eval_set("val")["inputs"]  # [360, 4, 16]
  np.testing.assert_array_equal(p[:, 1].reshape(-1, 4, 4), t.eval_set("val")["inputs"][:, :4, 4:])


def test_karate_labels_and_edges():
  import networkx as nx
  g = nx.karate_club_graph()
  b = task("karate").batch("train", 0, 1)
  assert [g.nodes[v]["club"] == "Officer" for v in range(34)] == b["labels"].astype(bool).tolist()
  edges = b["graph"].edges
  assert set(map(tuple, edges.T.tolist())) == {e for u, v in g.edges for e in ((u, v), (v, u))}
  assert edges.shape[1] == 2 * g.number_of_edges()
  sizes = [int(task("karate").batch(s, 0, 1)["mask"].sum()) for s in ("train", "val", "test")]
  assert sizes == [8, 8, 18]


def test_shakespeare_windows_are_text_from_the_right_split():
  text = SHAKESPEARE.read_text(encoding="utf-8")
  t = task("shakespeare")
  held_out = text[int(len(text) * 0.9):]
  train = text[:int(len(text) * 0.9)]
  assert t.tokens[2:] == tuple(sorted(set(text)))

  def decode(ids):
    return "".join(t.tokens[i] for i in ids)

  for x, y in zip(t.eval_set("test")["inputs"][:20], t.eval_set("test")["labels"][:20]):
    s = decode(x) + decode(y[-1:])
    assert held_out.find(s, len(held_out) // 2) >= len(held_out) // 2
  for x in t.batch("train", 0, 8, seed=0)["inputs"]:
    assert decode(x) in train


# -------------------------------------------------------------------------------- Planetoid

def test_cora_matches_the_reference_loader():
  import scipy.sparse  # noqa: F401  (trusted files: plain pickle with SciPy as the reference)
  raw = {}
  with warnings.catch_warnings():  # scipy.sparse.csr (the pickled module path) is deprecated
    warnings.simplefilter("ignore", DeprecationWarning)
    for part in CORA_PARTS[:-1]:
      raw[part] = pickle.loads((PLANETOID / f"ind.cora.{part}").read_bytes(), encoding="latin1")
  reorder = [int(line) for line in (PLANETOID / "ind.cora.test.index").read_text().split()]
  g = load_planetoid("cora", PLANETOID)
  assert g.features.shape == (2708, 1433) and g.num_classes == 7 and g.labels.shape == (2708,)
  assert (len(g.train_index), len(g.val_index), len(g.test_index)) == (140, 500, 1000)
  assert g.edges.shape == (2, 10556)
  feats = np.vstack([raw["allx"].toarray(), raw["tx"].toarray()])
  labels = np.vstack([raw["ally"], raw["ty"]]).argmax(1)
  feats[reorder], labels[reorder] = feats[sorted(reorder)], labels[sorted(reorder)]
  np.testing.assert_array_equal(g.features, feats)
  np.testing.assert_array_equal(g.labels, labels)
  assert g.test_index.tolist() == sorted(reorder) and g.train_index.tolist() == list(range(140))
  assert g.val_index.tolist() == list(range(140, 640))
  ref = {(u, v) for u, ns in raw["graph"].items() for v in ns if u != v}
  ref |= {(v, u) for u, v in ref}
  got = list(map(tuple, g.edges.T.tolist()))
  assert len(got) == len(set(got)) == len(ref) and set(got) == ref
  normed = load_planetoid("cora", PLANETOID, normalize_features=True).features
  np.testing.assert_allclose(normed, feats / feats.sum(1, keepdims=True), rtol=1e-6)


@pytest.fixture
def cora_copy(tmp_path):
  for part in CORA_PARTS:
    shutil.copy(PLANETOID / f"ind.cora.{part}", tmp_path / f"ind.cora.{part}")
  return tmp_path


class _Payload:
  def __init__(self, call, arg):
    self.call, self.arg = call, arg

  def __reduce__(self):
    return self.call, (self.arg,)


@pytest.mark.parametrize("make", [
    lambda m: _Payload(os.system, f"touch {m}"),
    lambda m: _Payload(eval, f"open({str(m)!r}, 'w').close()"),
    lambda m: {"graph": [np.zeros(2), _Payload(os.system, f"touch {m}")]},  # nested inside admitted types
])
def test_malicious_pickle_is_refused_without_side_effect(cora_copy, tmp_path_factory, make):
  marker = tmp_path_factory.mktemp("side_effect") / "pwned"
  (cora_copy / "ind.cora.x").write_bytes(pickle.dumps(make(marker), protocol=2))
  with pytest.raises(UnsafePickleError, match=r"ind\.cora\.x: refused to unpickle global '(posix\.system|"
                     r"__builtin__\.eval)'"):
    load_planetoid("cora", cora_copy)
  assert not marker.exists()


def test_restricted_unpickler_reads_plain_python3_pickles(tmp_path):
  from collections import defaultdict
  obj = defaultdict(list, {1: [2, 3]}), np.arange(6, dtype=np.float32).reshape(2, 3)
  (tmp_path / "p").write_bytes(pickle.dumps(obj, protocol=2))
  graph, array = safe_pickle.load(tmp_path / "p")
  assert dict(graph) == {1: [2, 3]}
  np.testing.assert_array_equal(array, obj[1])


def test_absurd_declared_shape_is_refused_before_allocating(cora_copy):
  import scipy.sparse  # only to write the pickle: the loader reads it without SciPy
  empty = scipy.sparse.csr_matrix((200_000, 200_000), dtype=np.float32)  # 149 GiB dense
  (cora_copy / "ind.cora.tx").write_bytes(pickle.dumps(empty, protocol=4))
  with pytest.raises(ValueError, match=r"ind\.cora\.tx': csr_matrix declares shape 200000x200000 "
                     r"\(40,000,000,000 entries\), more than the 268,435,456"):
    load_planetoid("cora", cora_copy)


@pytest.mark.parametrize("part", ["allx", "graph", "ty"])
def test_truncated_file_named(cora_copy, part):
  path = cora_copy / f"ind.cora.{part}"
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  with pytest.raises(ValueError, match=rf"ind\.cora\.{part}: truncated or corrupt"):
    load_planetoid("cora", cora_copy)


def test_missing_file_dir_and_bad_index_named(cora_copy, tmp_path_factory):
  (cora_copy / "ind.cora.ty").unlink()
  with pytest.raises(FileNotFoundError, match=r"missing file .*ind\.cora\.ty"):
    load_planetoid("cora", cora_copy)
  with pytest.raises(ValueError, match="data directory .*nowhere.* is not a directory"):
    load_planetoid("cora", cora_copy / "nowhere")
  with pytest.raises(ValueError, match="unknown dataset name 'arxiv'; valid names: cora, citeseer, pubmed"):
    load_planetoid("arxiv", cora_copy)
  other = tmp_path_factory.mktemp("cora2")
  for part in CORA_PARTS:
    shutil.copy(PLANETOID / f"ind.cora.{part}", other / f"ind.cora.{part}")
  (other / "ind.cora.test.index").write_text("12\nabc\n")
  with pytest.raises(ValueError, match=r"ind\.cora\.test\.index.* one integer node id per line"):
    load_planetoid("cora", other)


# -------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name, kwargs, error, match", [
    ("assoc_recall", {"bogus": 1}, ValueError, r"unknown kwarg\(s\) 'bogus'; valid kwargs: num_pairs=4, "),
    ("assoc_recall", {"num_pairs": 9, "num_keys": 8}, ValueError,
     r"kwarg num_pairs \(9\) must be <= num_keys"),
    ("copy", {"length": 0}, ValueError, "kwarg length must be >= 1"),
    ("copy", {"length": 4.5}, TypeError, "kwarg length must be an int"),
    ("sort", {"length": 4, "min_length": 5}, ValueError, r"kwarg min_length \(5\) must be <= length"),
    ("selective_copy", {"length": 3, "num_marked": 4}, ValueError, "kwarg length .* too short"),
    ("listops", {"max_length": 3}, ValueError, "kwarg max_length must be >= 4"),
    ("listops", {"min_length": 500}, ValueError, "kwarg min_length .* exceeds the longest"),
    ("listops", {"operator_prob": 1.5}, ValueError, "kwarg operator_prob must be a probability"),
    ("digits", {"layout": "cols"}, ValueError, "kwarg layout='cols' is not valid; choose one of 'rows'"),
    ("digits", {"layout": "patches", "patch_size": 3}, ValueError, "kwarg patch_size .* must divide"),
    ("digits", {"eval_size": 1000}, ValueError, "kwarg eval_size .* too large"),
    ("karate", {"train_per_class": 10, "val_per_class": 7}, ValueError, "kwarg train_per_class"),
    ("planetoid", {"dataset": "arxiv", "data_dir": "."}, ValueError, "kwarg dataset='arxiv'"),
    ("planetoid", {"subgraph_hops": -1}, ValueError, r"kwarg subgraph_hops must be an int >= 0"),
    ("shakespeare", {"path": "/nonexistent/input.txt"}, FileNotFoundError, "kwarg path"),
    ("shakespeare", {"eval_size": 10 ** 6}, ValueError, "kwarg eval_size"),
])
def test_bad_kwargs_name_the_kwarg(name, kwargs, error, match):
  with pytest.raises(error, match=match):
    registry.get("task", name)(**kwargs)


def test_missing_planetoid_dataset_names_the_download_command():
  with pytest.raises(FileNotFoundError, match=r"ind\.citeseer\.\*.*`attnlab download planetoid citeseer`"):
    registry.get("task", "planetoid")(dataset="citeseer")


def test_text_too_short_for_seq_len(tmp_path):
  (tmp_path / "t.txt").write_text("to be or not to be " * 20)
  with pytest.raises(ValueError, match=r"too few for kwarg seq_len=64"):
    registry.get("task", "shakespeare")(path=str(tmp_path / "t.txt"))
  t = registry.get("task", "shakespeare")(path=str(tmp_path / "t.txt"), seq_len=4, eval_size=2)
  assert t.spec["vocab_size"] == 2 + len(set("to be or not")) and t.eval_set("val")["inputs"].shape == (2, 4)


def test_unknown_task_split_and_batch_arguments():
  with pytest.raises(ValueError, match="unknown task 'nope'; registered tasks: .*assoc_recall"):
    registry.get("task", "nope")
  t = task("copy")
  with pytest.raises(ValueError, match="unknown split 'dev'; valid splits: train, val, test"):
    t.batch("dev", 0, 4)
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    t.batch("train", 0, 0)
  with pytest.raises(ValueError, match="eval_set is for 'val' and 'test'"):
    t.eval_set("train")


@pytest.mark.parametrize("name, module", [("digits", "sklearn.datasets"), ("karate", "networkx")])
def test_missing_extra_says_what_to_install(monkeypatch, name, module):
  monkeypatch.setitem(sys.modules, module, None)
  with pytest.raises(ImportError, match=r"pip install 'attnlab\[data\]'"):
    registry.get("task", name)()


def test_citeseer_isolated_test_nodes_are_padded(tmp_path):
  """A tiny Citeseer-named dataset: 502 allx nodes (2 train + 500 val), test ids 504 and 502 (file
  order); node 503 has no tx row (isolated) and must be padded with zeros, as Kipf & Welling."""
  rng = np.random.default_rng(0)
  allx = rng.random((502, 3)).astype(np.float32)
  ally = np.eye(2)[rng.integers(0, 2, 502)]
  tx, ty = rng.random((2, 3)).astype(np.float32), np.eye(2)[[1, 0]]
  graph = {0: [1, 1, 0], 1: [0], 504: [502]}  # a duplicate and a self loop
  files = {"x": allx[:2], "y": ally[:2], "tx": tx, "ty": ty, "allx": allx, "ally": ally, "graph": graph}
  for part, obj in files.items():
    (tmp_path / f"ind.citeseer.{part}").write_bytes(pickle.dumps(obj, protocol=2))
  (tmp_path / "ind.citeseer.test.index").write_text("504\n502\n")
  g = load_planetoid("citeseer", tmp_path)
  expected = np.concatenate([allx, np.zeros((3, 3), np.float32)])  # [505, 3]
  expected[504], expected[502] = tx[0], tx[1]  # tx row i is node test.index[i]
  np.testing.assert_array_equal(g.features, expected)
  assert g.labels[502:].tolist() == [0, 0, 1] and g.labels[:502].tolist() == ally.argmax(1).tolist()
  assert g.test_index.tolist() == [502, 504] and g.train_index.tolist() == [0, 1]
  assert g.val_index.tolist() == list(range(2, 502))
  assert sorted(map(tuple, g.edges.T.tolist())) == [(0, 1), (1, 0), (502, 504), (504, 502)]
  (tmp_path / "ind.citeseer.test.index").write_text("504\n100000000000\n")  # 1e11 nodes to pad
  with pytest.raises(ValueError, match=r"test\.index ids span 99,999,999,497 nodes \(504\.\.100000000000\)"):
    load_planetoid("citeseer", tmp_path)


def test_planetoid_sparse_features_hold_the_dense_features():
  dense = registry.get("task", "planetoid")(dataset="cora")
  sparse = registry.get("task", "planetoid")(dataset="cora", sparse_features=True)
  d, s = dense.batch("train", 0, 1), sparse.batch("train", 0, 1)
  assert set(s) == set(d) == {"graph", "labels", "mask"}
  x = s["graph"].features
  assert isinstance(x, SparseMatrix) and x.shape == d["graph"].features.shape
  inc, vals = x.incidence, x.values  # the stored entries: out = node, in = feature
  idx = np.stack([inc.out_index, inc.in_index], 1)
  assert idx.dtype == np.int32 and vals.dtype == np.float32 and np.all(vals != 0)
  order = np.lexsort((idx[:, 1], idx[:, 0]))
  assert np.array_equal(order, np.arange(len(idx)))  # row-major
  rebuilt = np.zeros_like(d["graph"].features)
  rebuilt[idx[:, 0], idx[:, 1]] = vals
  np.testing.assert_array_equal(rebuilt, d["graph"].features)
  for k in ("labels", "mask"):
    np.testing.assert_array_equal(s[k], d[k])
  jax.tree.map(np.testing.assert_array_equal, (s["graph"].edges, s["graph"].layers),
               (d["graph"].edges, d["graph"].layers))


# ------------------------------------------------------------------ computation subgraphs

def _distances(edges, roots, hops):
  """Plain breadth-first search against the edge direction: {node: fewest edges from it to a
  root}, for nodes within ``hops``."""
  dist = {int(t): 0 for t in roots}
  frontier = set(dist)
  for h in range(1, hops + 1):
    frontier = {int(s) for s, t in edges.T if int(t) in frontier and int(s) not in dist}
    dist.update({v: h for v in frontier})
  return dist


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_computation_subgraph_matches_breadth_first_search(hops):
  rng = np.random.default_rng(hops)
  n = 60
  pairs = rng.integers(0, n, (90, 2))
  pairs = pairs[pairs[:, 0] != pairs[:, 1]]
  edges = np.unique(pairs, axis=0).T.astype(np.int32)  # directed [2, E], sorted (sender, receiver)
  roots = np.array([42, 3, 17])
  dist = _distances(edges, roots, hops)
  nodes, sizes, layer_edges = computation_subgraph(edges, n, roots, hops)
  assert nodes.tolist() == sorted(dist, key=lambda v: (dist[v], v))  # by distance, then id
  assert sizes == [sum(d <= k for d in dist.values()) for k in range(hops + 1)]
  assert len(layer_edges) == hops
  for layer, sub in enumerate(layer_edges):  # edges into the nodes within hops - 1 - layer hops
    wanted = [(int(s), int(t)) for s, t in edges.T if dist.get(int(t), hops) <= hops - 1 - layer]
    assert [(int(s), int(t)) for s, t in nodes[sub].T] == wanted  # relabelled, order kept
    assert np.all(sub[1] < sizes[hops - 1 - layer]) and np.all(sub[0] < sizes[hops - layer])
  assert layer_edges[0].shape[1] < edges.shape[1] and len(nodes) < n  # not all reachable
  with pytest.raises(ValueError, match="hops must be a positive int"):
    computation_subgraph(edges, n, roots, 0)


def test_planetoid_subgraph_batches_give_the_whole_graph_outputs():
  """Two hops for the 2-layer GAT: the logits of the split's nodes (the first rows) are the whole
  graph's, and so are the masked loss and its gradients (up to fp32 summation order); each layer
  computes fewer rows than the graph has."""
  whole = task("planetoid", sparse_features=True)
  sub = task("planetoid", sparse_features=True, subgraph_hops=2)
  assert sub.spec["subgraph_hops"] == 2 and whole.spec["subgraph_hops"] == 0
  attention = AttentionSpec(graph=True, score="additive", num_heads=2, head_mode="copy", dropout=0.6)
  model = registry.get("model", "gat")(spec=sub.spec, rngs=nnx.Rngs(0), attention=attention, hidden=4,
                                      value_dropout=0.6)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def logits_and_grads(params, batch):
    def loss(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      return losses.loss_and_metrics(m, batch, family="node_classifier", train=False)[0]
    return nnx.merge(graphdef, params, rest, copy=True)(batch, train=False)[0], jax.grad(loss)(params)

  w, s = whole.batch("train", 0, 1), sub.batch("train", 0, 1)  # (val/test: the same code)
  count = int(w["mask"].sum())
  assert s["mask"][:count].all() and not s["mask"][count:].any()  # the split's nodes first
  layers = list(s["graph"].layers)  # one incidence per message-passing layer
  assert layers[1].num_out == count < layers[0].num_out < layers[0].num_in == len(s["labels"])
  assert layers[1].num_in == layers[0].num_out and len(s["labels"]) < len(w["labels"])
  lw, gw = logits_and_grads(params, w)
  ls, gs = logits_and_grads(params, s)
  assert ls.shape[0] == count
  np.testing.assert_allclose(ls, np.asarray(lw)[w["mask"]], rtol=1e-6, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8), gs, gw)
