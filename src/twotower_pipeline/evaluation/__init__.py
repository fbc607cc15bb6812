"""Baselines, health checks, the retrieval index and retrieval from histories."""
