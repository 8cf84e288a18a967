"""Shared test set-up: cheap XLA compile flags and a persistent compilation cache (tests compile more
than they run), and an empty attnlab data directory."""

import atexit
import os
import pathlib
import shutil
import tempfile

# The tests' programs are tiny and run a few times, so XLA's compile time dominates them: its cheap
# optimisation level (LLVM's, not XLA's HLO passes) compiles several times faster with the same
# semantics. Set before jax creates its backend; subprocesses inherit it.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true"]))

import jax  # noqa: E402  (after XLA_FLAGS)

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_CACHE = pathlib.Path(os.environ.get("ATTNLAB_TEST_JAX_CACHE", _ROOT / ".pytest_cache" / "jax"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# The tests compare with NumPy at fp32 tolerances: ask for fp32 matmuls where the backend's default
# is lower (GPUs use TF32 for fp32 dots, ~1e-3 relative error; README "Set-up"). CPU dots are fp32
# already; there the programs (and their compilation-cache entries) stay as they are.
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")

# Datasets come from the copies shipped with attnlab, never from the user's data directory
# (~/.cache/attnlab or $ATTNLAB_DATA_DIR): an empty one for this session and its subprocesses.
os.environ["ATTNLAB_DATA_DIR"] = tempfile.mkdtemp(prefix="attnlab_test_data_")
atexit.register(shutil.rmtree, os.environ["ATTNLAB_DATA_DIR"], ignore_errors=True)
