"""Two-tower training, its history and the learned embeddings."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
