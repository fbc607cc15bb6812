"""twotower-pipeline: two-tower retrieval models from raw interaction logs, judged honestly."""

from twotower_pipeline.config.threads import ThreadGovernor, apply_thread_policy

__version__ = "0.1.0"

# Before any module of the package imports torch: OpenMP reads its variables once, on load.
THREAD_POLICY = apply_thread_policy()
# Torch's thread count, kept to the cores other processes leave free (config/threads.py).
THREADS = ThreadGovernor(THREAD_POLICY.adaptive)
