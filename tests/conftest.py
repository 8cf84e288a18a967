"""Shared test set-up: a persistent compilation cache so repeated runs skip XLA compiles."""

import os
import pathlib

import jax

_CACHE = pathlib.Path(os.environ.get("ATTNLAB_TEST_JAX_CACHE",
                                     pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

SHARED_DATA = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"
