"""Kedro datasets, the run manifest and experiment tracking."""
