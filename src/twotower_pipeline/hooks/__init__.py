"""Kedro hooks: settings, provenance, rollback, readable errors, logging, MLflow."""
