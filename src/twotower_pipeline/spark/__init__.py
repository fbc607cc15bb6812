"""Data preparation on PySpark: session, hooks, datasets, and the Spark twins of
ingestion and split."""
