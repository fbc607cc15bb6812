"""twotower-pipeline: two-tower retrieval models from raw interaction logs, judged honestly."""

# THREADS keeps torch's thread count to the cores other processes leave free (config/threads.py).
from twotower_pipeline.config.threads import THREADS, apply_thread_policy

__version__ = "0.1.0"

# Before any module of the package imports torch: OpenMP reads its variables once, on load.
THREAD_POLICY = apply_thread_policy()

__all__ = ["THREADS", "THREAD_POLICY", "__version__"]
