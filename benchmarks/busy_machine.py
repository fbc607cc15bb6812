"""Training beside other busy processes: the step and the default `kedro run`, per thread policy.

Torch's OpenMP threads spin while they wait for each other; when another
process takes one of the cores, the thread that lost its core stalls every
parallel region while the others spin. The project keeps the thread count to
the cores other processes leave free (`src/twotower_pipeline/config/threads.py`).
This benchmark measures, idle and beside one and two CPU-bound processes (a
pure-Python loop each):

- the training step at the default data's shape (the default history tower,
  d 16, `train_throughput.py --one`), for each policy, in interleaved rounds
  (the median is reported):
  `project` (nothing set: the thread governor),
  `fixed` (OMP_NUM_THREADS = the cores: the count pinned, as before the governor),
  `passive` (the count pinned and OMP_WAIT_POLICY=PASSIVE: waiting threads sleep),
  `one_thread` (OMP_NUM_THREADS=1);
- the default `kedro run` in a temporary copy of the project: `fixed` and
  `project` idle (the run must be no slower idle than before), then
  `project` beside one and two busy processes, with each node's seconds.

Prints a table and writes benchmarks/results/busy_machine.json.

    python benchmarks/busy_machine.py [--skip-run] [--busy 0,1,2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twotower_pipeline.config.threads import apply_thread_policy, usable_cores
from untuned import kedro_run, latest, make_project, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CORES = str(usable_cores())
POLICIES = {
    "project": {},
    "fixed": {"OMP_NUM_THREADS": CORES},
    "passive": {"OMP_NUM_THREADS": CORES, "OMP_WAIT_POLICY": "PASSIVE"},
    "one_thread": {"OMP_NUM_THREADS": "1"},
}
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
NODE_LINE = re.compile(r"\] (\S+) \((\d+\.\d) s[,)]")


def policy_environment(policy: str) -> dict[str, str]:
    """Return this process's environment with only the policy's thread variables set.

    `project` gets exactly what the package sets on its import, so the child is
    measured under the policy whatever it imports first.
    """
    cleared = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")
    environ = {k: v for k, v in os.environ.items() if k not in cleared}
    environ = {**environ, **POLICIES[policy], "KEDRO_DISABLE_TELEMETRY": "true"}
    if policy == "project":
        apply_thread_policy(environ)
    return environ


class Busy:
    """`count` CPU-bound Python processes, alive inside the `with` block."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.children: list[subprocess.Popen] = []

    def __enter__(self) -> Busy:
        self.children = [
            subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(self.count)
        ]
        time.sleep(0.5 if self.count else 0)
        return self

    def __exit__(self, *exc) -> None:
        for child in self.children:
            child.kill()
            child.wait()


def step_rate(policy: str, busy: int, positives: int) -> float:
    """Return the training step's examples/s under a policy beside `busy` busy processes."""
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "train_throughput.py"),
        "--one",
        "--method",
        "project_history",
        "--n-users",
        "5000",
        "--n-items",
        "2000",
        "--dim",
        "16",
        "--positives",
        str(positives),
    ]
    with Busy(busy):
        done = subprocess.run(
            command, capture_output=True, text=True, env=policy_environment(policy), check=True
        )
    return json.loads(done.stdout.strip().splitlines()[-1])["examples_per_s"]


def default_run(project: Path, policy: str, busy: int) -> dict:
    """Return the default `kedro run`'s seconds and test HR@10 under a policy, beside `busy`."""
    saved = dict(os.environ)
    environ = policy_environment(policy)
    os.environ.clear()
    os.environ.update(environ)
    try:
        with Busy(busy):
            started = time.perf_counter()
            log, peak_mb = kedro_run(project)
            seconds = time.perf_counter() - started
    finally:
        os.environ.clear()
        os.environ.update(saved)
    metrics = latest(project / "data" / "08_reporting" / "evaluation_metrics.json")
    hit_rate = metrics["model"]["hit_rate@10"]
    nodes = {name: float(value) for name, value in NODE_LINE.findall(log)}
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "test_hr@10": hit_rate, "nodes": nodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", default="0,1,2")
    parser.add_argument("--positives", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the step")
    parser.add_argument("--skip-run", action="store_true", help="the training step only")
    parser.add_argument("--skip-step", action="store_true", help="the default run only")
    args = parser.parse_args()
    counts = [int(n) for n in args.busy.split(",")]
    rates: dict[tuple[str, int], list[float]] = {}
    for round_number in range(0 if args.skip_step else args.rounds):
        for busy in counts:
            for policy in POLICIES:
                rate = step_rate(policy, busy, args.positives)
                rates.setdefault((policy, busy), []).append(rate)
                print(
                    f"step round {round_number + 1} {policy:<10} busy {busy}: "
                    f"{rate / 1e6:.2f}M examples/s",
                    flush=True,
                )
    steps = [
        {
            "policy": policy,
            "busy": busy,
            "examples_per_s": statistics.median(values),
            "rounds": values,
        }
        for (policy, busy), values in rates.items()
    ]
    runs = []
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as workdir:
            project = make_project(Path(workdir))
            plan = [("fixed", 0), ("project", 0)] + [("project", n) for n in counts if n]
            for policy, busy in plan:
                row = {"policy": policy, "busy": busy, **default_run(project, policy, busy)}
                runs.append(row)
                slowest = sorted(row["nodes"].items(), key=lambda kv: -kv[1])[:3]
                print(
                    f"run   {policy:<10} busy {busy}: {row['seconds']:.0f} s, "
                    f"test HR@10 {row['test_hr@10']:.4f}; slowest nodes {slowest}",
                    flush=True,
                )
    if steps:
        fixed_idle = next(
            r["examples_per_s"] for r in steps if r["policy"] == "fixed" and r["busy"] == 0
        )
        print(
            f"\n| policy | busy processes | step examples/s (median of {args.rounds}) "
            "| x fixed idle |"
        )
        print("|---|---|---|---|")
        for row in sorted(steps, key=lambda r: (r["busy"], list(POLICIES).index(r["policy"]))):
            print(
                f"| {row['policy']} | {row['busy']} | {row['examples_per_s'] / 1e6:.2f}M | "
                f"{row['examples_per_s'] / fixed_idle:.2f} |"
            )
    if runs:
        idle_run = next(r["seconds"] for r in runs if r["policy"] == "fixed" and r["busy"] == 0)
        print("\n| default kedro run | busy processes | seconds | x fixed idle | test HR@10 |")
        print("|---|---|---|---|---|")
        for row in runs:
            print(
                f"| {row['policy']} | {row['busy']} | {row['seconds']:.0f} | "
                f"{row['seconds'] / idle_run:.2f} | {row['test_hr@10']:.4f} |"
            )
    # A part skipped keeps what the last run of it wrote.
    path = RESULTS / "busy_machine.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    write_json(
        path,
        {
            "cores": os.cpu_count(),
            "steps": steps or kept.get("steps", []),
            "runs": runs or kept.get("runs", []),
        },
    )


if __name__ == "__main__":
    main()
