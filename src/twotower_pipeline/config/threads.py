"""The process's OpenMP thread policy, set before torch starts its thread pool.

Torch's OpenMP threads spin while they wait for one another. On a machine
whose cores another busy process shares, a thread that loses its core leaves
the others spinning through every parallel region of every step, and training
slows by far more than the share of the machine it lost
(`benchmarks/busy_machine.py` measures it). Passive waiting makes a waiting
thread sleep instead; the thread count follows the cores this process may run
on (its CPU affinity), not the cores the machine has.

OpenMP reads these variables once, when its runtime is loaded with torch, so
`apply_thread_policy` runs on the package's import, before any module imports
torch. Processes started from this one (the elastic launcher's ranks, a
`kedro run` in a subprocess) inherit the environment. A setting the user made
always wins: no variable already set is changed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass

# Any of these in the environment says the user chose how threads wait.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPolicy:
    """What apply_thread_policy did: the variables it set and whether torch was loaded already."""

    set_variables: dict[str, str]
    torch_was_loaded: bool


def usable_cores() -> int:
    """Return the number of cores this process may run on (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not every platform has an affinity mask
        return max(1, os.cpu_count() or 1)


def apply_thread_policy(environ: MutableMapping[str, str] | None = None) -> ThreadPolicy:
    """Return the policy applied: passive waiting, and threads from the CPU affinity.

    Only variables the user left unset are set. Where torch is loaded already
    (a notebook that imported it first), its OpenMP runtime has read the
    environment and the policy cannot take effect in this process; the result
    says so, and processes started from here still get it.
    """
    environ = os.environ if environ is None else environ
    chosen: dict[str, str] = {}
    if not any(name in environ for name in WAIT_VARIABLES):
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    cores = usable_cores()
    if cores < (os.cpu_count() or cores) and not any(name in environ for name in THREAD_VARIABLES):
        chosen["OMP_NUM_THREADS"] = str(cores)
    environ.update(chosen)
    return ThreadPolicy(chosen, torch_was_loaded="torch" in sys.modules)
