"""How many threads torch works with: the cores this process may use, less those others keep busy.

Torch's OpenMP threads spin for a moment while they wait for one another at
the end of each parallel region. On an idle machine that is the fastest way
to run the many small regions of a training step. When another busy process
takes one of the cores, the thread that loses its core stalls every region
of every step while the other spins, and training ran 5 to 13 times slower
than idle (`benchmarks/busy_machine.py`). Making the waiting thread sleep
(`OMP_WAIT_POLICY=PASSIVE`) cures that but costs the idle run a lot, because
it wakes threads hundreds of times a step.

So the project leaves OpenMP's waiting as it is and changes the thread count
instead. `ThreadGovernor.adjust`, called before each training step and each
node, measures over the last second how much of this process's cores other
processes kept busy (`/proc/stat` less this process's own CPU time) and runs
torch on the cores left free, never fewer than one and never more than it
started with. An idle machine keeps every thread, so an idle run computes
what it did before, bit for bit. The same thread count gives the same
results; the training history records the fewest threads each epoch ran on.

A user's setting always wins. With `OMP_NUM_THREADS` or `MKL_NUM_THREADS`
set, or `torch.set_num_threads` called, the count stays as the user chose
(the governor never raises it above the last count it did not set itself).

`apply_thread_policy` runs on the package's import, before any module imports
torch: where the CPU affinity allows fewer cores than the machine has, it
starts torch with that many threads, and it says whether the governor may
change the count.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

# Any of these in the environment says the user chose the thread count.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
PROC_STAT = Path("/proc/stat")
INTERVAL_SECONDS = 1.0  # how long a measurement of the others' load runs
STALE_AFTER = 3.0  # a window longer than this many intervals is not used


@dataclass(frozen=True)
class ThreadPolicy:
    """What apply_thread_policy did: the variables it set, whether torch was loaded already,
    and whether the thread count may follow the load of other processes."""

    set_variables: dict[str, str]
    torch_was_loaded: bool
    adaptive: bool


def usable_cores() -> int:
    """Return the number of cores this process may run on (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not every platform has an affinity mask
        return max(1, os.cpu_count() or 1)


def apply_thread_policy(environ: MutableMapping[str, str] | None = None) -> ThreadPolicy:
    """Return the policy applied: threads from the CPU affinity, adaptive unless the user chose.

    Only variables the user left unset are set. Where torch is loaded already
    (a notebook that imported it first), the result says so; processes started
    from here still get the variables.
    """
    environ = os.environ if environ is None else environ
    chosen: dict[str, str] = {}
    user_chose = any(name in environ for name in THREAD_VARIABLES)
    cores = usable_cores()
    if cores < (os.cpu_count() or cores) and not user_chose:
        chosen["OMP_NUM_THREADS"] = str(cores)
    environ.update(chosen)
    return ThreadPolicy(chosen, torch_was_loaded="torch" in sys.modules, adaptive=not user_chose)


def busy_core_seconds(cores: frozenset[int] | None = None, with_nice: bool = True) -> float | None:
    """Return the seconds the given cores (all when None) have spent busy since boot.

    Busy is user, nice, system, irq and softirq time of /proc/stat (without nice
    when `with_nice` is false); None where the file cannot be read (not Linux).
    """
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cores is not None and int(name[3:]) not in cores:
            continue
        user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
        ticks += user + (nice if with_nice else 0) + system + irq + softirq
    return ticks / os.sysconf("SC_CLK_TCK")


def _niceness() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0


def free_cores(cores: int, others_busy: float) -> int:
    """Return the cores left to this process when others keep `others_busy` cores busy (≥ 1)."""
    return max(1, min(cores, int(cores - max(others_busy, 0.0) + 0.5)))


class ThreadGovernor:
    """Keeps torch's thread count to the cores other processes leave free (see the module)."""

    def __init__(
        self,
        enabled: bool,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        machine_busy: Callable[[], float | None] | None = None,
        own_busy: Callable[[], float] = time.process_time,
        cores: int | None = None,
    ) -> None:
        try:
            affinity = frozenset(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = None
        self.enabled = enabled
        self.interval = interval
        self.clock = clock
        # Niced processes (a background job) yield their cores to this one, so they are
        # not counted against it, unless this process is niced itself.
        with_nice = _niceness() > 0
        self.machine_busy = machine_busy or (lambda: busy_core_seconds(affinity, with_nice))
        self.own_busy = own_busy
        self.cores = cores or usable_cores()
        self._mark = self._sample()
        self._ceiling: int | None = None  # the most threads: torch's count when first asked
        self._set: int | None = None  # the last count this governor set
        self.fewest: int | None = None  # the fewest threads since the last `start_count`

    def _sample(self) -> tuple[float, float | None, float]:
        return self.clock(), self.machine_busy(), self.own_busy()

    def adjust(self) -> int:
        """Set and return torch's thread count for the load of the last second.

        Cheap between measurements (one clock read). Does nothing when disabled,
        off Linux, or when someone else changed the count since this last set it:
        that count becomes the most it will use.
        """
        import torch

        current = torch.get_num_threads()
        if not self.enabled:
            return current
        if current != self._set:
            self._ceiling = current
        now = self.clock()
        elapsed = now - self._mark[0]
        if elapsed >= self.interval:
            sample = self._sample()
            (then, machine_then, own_then), (_, machine_now, own_now) = self._mark, sample
            self._mark = sample
            # A window much longer than the interval (nothing asked for a while) says
            # little about the load now: it only starts the next one.
            fresh = elapsed <= STALE_AFTER * self.interval
            if fresh and machine_then is not None and machine_now is not None:
                others = (machine_now - machine_then - (own_now - own_then)) / (now - then)
                wanted = min(self._ceiling, free_cores(self.cores, others))
                if wanted != current:
                    torch.set_num_threads(wanted)
                    current = wanted
        self._set = current
        self.fewest = current if self.fewest is None else min(self.fewest, current)
        return current

    def start_count(self) -> None:
        """Start counting the fewest threads anew (at an epoch's start)."""
        self.fewest = None

    def fewest_threads(self) -> int:
        """Return the fewest threads since `start_count` (torch's count when none was set)."""
        import torch

        return self.fewest if self.fewest is not None else torch.get_num_threads()


# The process's governor, made when the package is first imported: off when the user chose
# a thread count in the environment before that.
THREADS = ThreadGovernor(enabled=not any(name in os.environ for name in THREAD_VARIABLES))
