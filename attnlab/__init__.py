"""attnlab: a JAX/Flax framework for studying attention mechanisms by category."""

from attnlab import kernels, registry
from attnlab.attention_spec import AttentionSpec

__version__ = "0.1.0"
__all__ = ["AttentionSpec", "kernels", "registry", "__version__"]
