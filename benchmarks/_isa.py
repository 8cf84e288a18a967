"""The CPU's vector extensions, and an instruction-set cap for the benchmark scripts.

``apply_cap(argv)`` reads ``--max-isa=avx2`` (or ``--max-isa avx2``) and sets, before JAX and torch
are imported:

    XLA_FLAGS += --xla_cpu_max_isa=AVX2      XLA's own generated code (fusions: exp, max, where, ...)
    ATEN_CPU_CAPABILITY=avx2                 torch's vectorised ATen kernels (SDPA's softmax, ...)
    MKL_ENABLE_INSTRUCTIONS=AVX2             torch's fp32 GEMM (MKL)
    ONEDNN_MAX_CPU_ISA=AVX2                  torch's oneDNN primitives

What the cap does not reach: XLA's dot products run in YNNPACK (or Eigen), which pick their kernels
from the CPU at run time, so JAX's matmuls keep AVX-512 on an AVX-512 machine. On such a machine the
cap emulates an AVX2 CPU for torch completely and for JAX only outside the dots.
"""

from __future__ import annotations

import os
import platform

CAPS = {
    "avx2": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
_SHOWN = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
          "avx512_fp16", "amx_tile")


def cap_from_argv(argv: list[str]) -> str | None:
  """The value of ``--max-isa`` in ``argv`` (None when absent); a ValueError for unknown values."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith("--max-isa="):
      value = arg.split("=", 1)[1]
    elif arg == "--max-isa" and i + 1 < len(argv):
      value = argv[i + 1]
  if value is not None and value not in CAPS and value != "none":
    raise ValueError(f"--max-isa: {value!r} is not one of {sorted(CAPS) + ['none']}")
  return None if value == "none" else value


def apply_cap(argv: list[str]) -> str | None:
  """Sets the cap's environment from ``--max-isa`` (call before importing jax or torch)."""
  cap = cap_from_argv(argv)
  for name, value in CAPS.get(cap, {}).items():
    if name == "XLA_FLAGS":
      value = " ".join(x for x in (os.environ.get(name, ""), value) if x)
    os.environ[name] = value
  return cap


def vector_extensions() -> list[str]:
  """The vector extensions /proc/cpuinfo lists (of ``_SHOWN``), in that order."""
  try:
    with open("/proc/cpuinfo") as fh:
      flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
  except OSError:
    return []
  return [f for f in _SHOWN if f in flags]


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as fh:
      return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                  platform.processor())
  except OSError:
    return platform.processor()


def describe(cap: str | None, torch_loaded: bool = True) -> str:
  """One line: the CPU, its vector extensions and the cap in effect (JAX and torch)."""
  xla = [f for f in os.environ.get("XLA_FLAGS", "").split() if "max_isa" in f]
  parts = [f"CPU {cpu_model()} ({os.cpu_count()} cores), vector extensions: {' '.join(vector_extensions())}",
           f"ISA cap: {cap or 'none'} (XLA codegen: {xla[0].split('=')[1] if xla else 'native'}; "
           "JAX dots: native (YNNPACK dispatches at run time)"]
  if torch_loaded:
    try:
      import torch  # noqa: PLC0415
      parts[-1] += (f"; torch ATen: {torch.backends.cpu.get_cpu_capability()}, MKL: "
                    f"{os.environ.get('MKL_ENABLE_INSTRUCTIONS', 'native')}, oneDNN: "
                    f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}")
    except ImportError:
      pass
  return "; ".join(parts[:1]) + "\n" + parts[1] + ")"
