"""Parameters: the one schema, the config loader, the error types."""
