"""Item and user side features -> token tables and encoders; the synthetic data's oracle."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
