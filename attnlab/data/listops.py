"""ListOps (Nangia & Bowman 2018), as generated for Long Range Arena (Tay et al. 2021).

Nested prefix expressions over the digits 0-9 with the operators MAX, MIN, MED (median, truncated
to an int as LRA's ``int(np.median)``) and SM (sum modulo 10), e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` -> 9.
The label is the value of the expression (10 classes). Hierarchical structure over long sequences:
the answer depends on every token, grouped by brackets.

Generator (LRA's ``generate_tree``): a node at depth < ``max_depth`` is an operator with probability
``operator_prob`` (LRA: 0.25), else a digit; an operator takes 2..``max_args`` arguments. Unlike LRA the
root is always an operator (a bare digit is no task). Expressions whose token count is outside
[``min_length``, ``max_length``] are redrawn; sequences are PAD-ed at the end to ``max_length``.

Tokens: 0 PAD, 1 BOS, 2..11 the digits 0..9, then ``[MIN``, ``[MAX``, ``[MED``, ``[SM``, ``]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnlab.data.base import FIRST_TOKEN, PAD, check_kwarg, kwarg_error, register_task
from attnlab.data.synthetic import SyntheticTask

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
TOKENS = ("<pad>", "<bos>") + tuple(str(d) for d in range(10)) + OPERATORS + (END,)
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}
MAX_TRIES = 1000  # redraws per example before the length window is declared (nearly) impossible


def _tree(rng: np.random.Generator, depth: int, max_depth: int, max_args: int, p_op: float) -> Any:
  """A digit, or (operator, [subtrees]); the root (depth 1) is always an operator."""
  if depth == 1 or (depth < max_depth and rng.random() < p_op):
    args = [_tree(rng, depth + 1, max_depth, max_args, p_op) for _ in range(rng.integers(2, max_args + 1))]
    return OPERATORS[rng.integers(len(OPERATORS))], args
  return int(rng.integers(10))


def _tokens(tree: Any, out: list[int]) -> list[int]:
  if isinstance(tree, int):
    out.append(FIRST_TOKEN + tree)
  else:
    out.append(TOKEN_ID[tree[0]])
    for arg in tree[1]:
      _tokens(arg, out)
    out.append(TOKEN_ID[END])
  return out


def _value(tree: Any) -> int:
  if isinstance(tree, int):
    return tree
  op, args = tree[0], [_value(a) for a in tree[1]]
  if op == "[MIN":
    return min(args)
  if op == "[MAX":
    return max(args)
  if op == "[MED":
    return int(np.median(args))
  return sum(args) % 10


def _longest(max_depth: int, max_args: int, cap: int) -> int:
  """The longest possible expression (saturating at ``cap``)."""
  length = 1
  for _ in range(max_depth - 1):
    length = min(cap, 2 + max_args * length)
  return length


@register_task("listops")
def make_listops(*, max_depth: int = 3, max_args: int = 5, max_length: int = 40, min_length: int = 0,
                 operator_prob: float = 0.25, eval_size: int = 512) -> SyntheticTask:
  """ListOps. Kwargs: max_depth (operator nesting + 1; >= 2), max_args (>= 2), max_length (= seq_len),
  min_length, operator_prob, eval_size."""
  name = "listops"
  max_depth = check_kwarg(name, "max_depth", max_depth, 2)
  max_args = check_kwarg(name, "max_args", max_args, 2)
  max_length = check_kwarg(name, "max_length", max_length, 4)
  min_length = check_kwarg(name, "min_length", min_length, 0)
  eval_size = check_kwarg(name, "eval_size", eval_size)
  if isinstance(operator_prob, bool) or not isinstance(operator_prob, (int, float)) \
     or not 0 <= operator_prob <= 1:
    raise kwarg_error(name, "operator_prob", f"must be a probability in [0, 1], got {operator_prob!r}")
  longest = _longest(max_depth, max_args, cap=10 ** 9)
  if min_length > min(max_length, longest):
    raise kwarg_error(name, "min_length", f"({min_length}) exceeds the longest possible expression "
                     f"({min(max_length, longest)} tokens for max_length={max_length}, "
                     f"max_depth={max_depth}, max_args={max_args})")
  if operator_prob == 0 and min_length > 2 + max_args:
    raise kwarg_error(name, "min_length", f"({min_length}) cannot be reached with operator_prob=0 "
                     f"(expressions have at most {2 + max_args} tokens)")

  def example(rng: np.random.Generator) -> tuple[list[int], int]:
    for _ in range(MAX_TRIES):
      tree = _tree(rng, 1, max_depth, max_args, float(operator_prob))
      tokens = _tokens(tree, [])
      if min_length <= len(tokens) <= max_length:
        return tokens, _value(tree)
    raise ValueError(f"task {name!r}: no expression with min_length={min_length} <= length <= "
                     f"max_length={max_length} in {MAX_TRIES} draws; widen the window or change "
                     f"max_depth/max_args/operator_prob")

  def generate(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    x = np.full((n, max_length), PAD, np.int32)  # [n, L]
    label = np.empty(n, np.int32)  # [n]
    for i in range(n):
      tokens, label[i] = example(rng)
      x[i, :len(tokens)] = tokens
    return {"inputs": x, "label": label}

  spec = {"vocab_size": len(TOKENS), "seq_len": max_length, "num_classes": 10}
  return SyntheticTask(name, "classifier", spec, generate, eval_size=eval_size, tokens=TOKENS)
