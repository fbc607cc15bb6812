"""twotower-pipeline: two-tower retrieval models from raw interaction logs, judged honestly."""

from twotower_pipeline.config.threads import apply_thread_policy

__version__ = "0.1.0"

# Before any module of the package imports torch: OpenMP reads its wait policy once, on load.
THREAD_POLICY = apply_thread_policy()
