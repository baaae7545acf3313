"""Evaluation: model-touching statistics (log-probs, generation) and pure metric functions."""
