"""mox-unlearn: machine unlearning of causal language models by memorize-then-extrapolate (MOX).

The Python API (docs/api.md)::

    from mox_unlearn import UnlearnConfig, unlearn, extrapolate, evaluate_tofu, evaluate_muse, select_alpha

The names are loaded on first use (mox_unlearn/api.py), so importing the package, and `mox --help`, stay fast.
"""

__version__ = "0.1.0"

# the Python API (mox_unlearn/api.py), loaded on first use
_API = (
    "UnlearnConfig",
    "unlearn",
    "extrapolate",
    "evaluate_tofu",
    "evaluate_muse",
    "select_alpha",
    "load_forget_model",
)
__all__ = [*_API, "versions", "__version__"]


def __getattr__(name: str):
    """The API's names, imported from mox_unlearn.api when first asked for."""
    if name in _API:
        from mox_unlearn import api

        return getattr(api, name)
    raise AttributeError(f"module 'mox_unlearn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def versions() -> dict[str, str]:
    """Versions of this package and the libraries that shape its numbers, for run and result files."""
    import sys

    import accelerate
    import torch
    import transformers

    return {
        "mox-unlearn": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": sys.version.split()[0],
    }
