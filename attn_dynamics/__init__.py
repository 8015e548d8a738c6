"""attn-dynamics: convergence studies of transformers in JAX/Flax.

Submodules load on first use (``attn_dynamics.models`` imports JAX and Flax; ``attn_dynamics.data``
and its default configs do not), so that a config file, and the command-line checks that read
it, start without JAX.
"""

import importlib

__all__ = ["attention", "freezing", "kernels", "models", "position"]
__version__ = "0.2.0"  # the one version source: pyproject reads it; CHANGELOG, CITATION match


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
