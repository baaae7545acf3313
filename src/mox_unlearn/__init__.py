"""mox-unlearn: machine unlearning of causal language models by memorize-then-extrapolate (MOX)."""

__version__ = "0.1.0"


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
