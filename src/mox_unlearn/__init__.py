"""mox-unlearn: machine unlearning of causal language models by memorize-then-extrapolate (MOX)."""

__version__ = "0.1.0"
