"""attn-dynamics: convergence studies of transformers in JAX/Flax."""

from attn_dynamics import attention, freezing, kernels, models, position

__all__ = ["attention", "freezing", "kernels", "models", "position"]
__version__ = "0.1.0"
