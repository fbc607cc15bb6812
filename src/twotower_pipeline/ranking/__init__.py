"""Ranking metrics and the evaluation protocol."""
