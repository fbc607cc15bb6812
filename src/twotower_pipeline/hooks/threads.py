"""Each node starts on the cores other processes leave free (config/threads.py)."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl

from twotower_pipeline.config.threads import THREADS


class ThreadHooks:
    """Before each node, sets torch's thread count for the machine's load of the last second."""

    @hook_impl
    def before_node_run(self) -> None:
        THREADS.adjust()
