"""Per-user time-ordered train / validation / test split; held-out sets hold positives only."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
