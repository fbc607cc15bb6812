"""Full-catalogue metrics, baselines, health checks, plots and the report."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
