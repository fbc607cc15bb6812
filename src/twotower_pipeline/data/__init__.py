"""Interaction data: ingestion, split, features, negative sampling, user histories,
the synthetic log."""
