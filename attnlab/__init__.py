"""attnlab: a JAX/Flax framework for studying attention mechanisms by category."""

from attnlab import kernels, registry

__version__ = "0.1.0"
__all__ = ["kernels", "registry", "__version__"]
