"""Training examples: every positive plus neg_ratio sampled negatives."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
