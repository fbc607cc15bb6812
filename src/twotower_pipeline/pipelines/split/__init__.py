"""Per-user time-ordered train / validation split; validation holds positives only."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
