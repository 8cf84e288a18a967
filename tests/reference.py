"""Plain NumPy references, written independently of attnlab's implementation."""

import numpy as np


def score(name, params, q, k):
  """[Lq, D], [Lk, D] -> [Lq, Lk], by the formulas of the papers, with explicit loops over pairs."""
  lq, lk, d = q.shape[0], k.shape[0], q.shape[1]
  out = np.zeros((lq, lk))
  for i in range(lq):
    for j in range(lk):
      qi, kj = q[i], k[j]
      if name == "dot":
        out[i, j] = qi @ kj
      elif name == "scaled_dot":
        out[i, j] = qi @ kj / np.sqrt(d)
      elif name == "general":
        out[i, j] = qi @ params["W"] @ kj
      elif name == "cosine":
        out[i, j] = np.exp(params["log_scale"]) * (qi @ kj) / (np.linalg.norm(qi) * np.linalg.norm(kj))
      elif name == "additive":
        out[i, j] = params["v"] @ np.tanh(qi @ params["W_q"] + kj @ params["W_k"] + params["b"])
      elif name == "concat":
        out[i, j] = params["v"] @ np.tanh(np.concatenate([qi, kj]) @ params["W"])
      else:
        raise ValueError(name)
  return out


def _project_simplex_bisect(f, n_iter=200):
  """τ with sum(f(τ)) = 1 for a decreasing f, by bisection."""
  lo, hi = -1e3, 1e3
  for _ in range(n_iter):
    mid = (lo + hi) / 2
    if f(mid).sum() > 1:
      lo = mid
    else:
      hi = mid
  return f((lo + hi) / 2)


def normalize(name, s, mask):
  """Row-wise normaliser of s [Lq, Lk] under mask; rows with no valid entry give zeros."""
  out = np.zeros_like(s, dtype=np.float64)
  for i in range(s.shape[0]):
    valid = mask[i]
    if not valid.any():
      continue
    z = s[i][valid].astype(np.float64)
    if name == "softmax":
      e = np.exp(z - z.max())
      p = e / e.sum()
    elif name == "sparsemax":
      p = _project_simplex_bisect(lambda t: np.maximum(z - t, 0))
    elif name == "entmax15":
      p = _project_simplex_bisect(lambda t: np.maximum(z / 2 - t, 0) ** 2)
    elif name == "sigmoid":
      p = 1 / (1 + np.exp(-(z - np.log(s.shape[1]))))
    else:
      raise ValueError(name)
    out[i, valid] = p
  return out


def attention(query, key, value, mask, score_name, norm_name, params=None):
  """Soft attention over [B, L, H, D] inputs with GQA, by loops over batch and heads."""
  b, lq, h, _ = query.shape
  hkv = key.shape[2]
  out = np.zeros((b, lq, h, value.shape[-1]))
  weights = np.zeros((b, h, lq, key.shape[1]))
  for bi in range(b):
    for hi in range(h):
      kv = hi // (h // hkv)
      s = score(score_name, params, query[bi, :, hi], key[bi, :, kv])
      w = normalize(norm_name, s, mask[bi, hi])
      weights[bi, hi] = w
      out[bi, :, hi] = w @ value[bi, :, kv]
  return out, weights
