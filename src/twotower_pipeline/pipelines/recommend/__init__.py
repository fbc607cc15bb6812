"""Top-K for users the model was never trained with, from a file of their histories."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
