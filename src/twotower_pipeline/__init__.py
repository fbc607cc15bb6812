"""twotower-pipeline: two-tower retrieval models from raw interaction logs, judged honestly."""

__version__ = "0.1.0"
