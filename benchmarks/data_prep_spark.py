"""Data preparation on pandas and on Spark (local mode), on the ML-25M-shaped log of data_prep.py.

Both engines run the project's own functions on the same raw Parquet file and
write what `kedro run` writes: the clean log, interactions and the two id
maps, the four split tables (Parquet files on pandas, folders of part files
on Spark). Each engine runs in a child process of its own, so its memory is
its own: peak resident memory is sampled over the process and its children
(on Spark in local mode the JVM child is the driver, and its executors run in
it).

    python benchmarks/data_prep_spark.py                        # 25M rows (minutes)
    python benchmarks/data_prep_spark.py --interactions 5000000 --users 32400 --items 11800

Prints a table and writes benchmarks/results/data_prep_spark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "data_prep_spark.json"
_PAGE = os.sysconf("SC_PAGE_SIZE")
SPLIT = {
    "strategy": "leave_last_out",
    "min_train_interactions": 2,
    "temporal_quantiles": [0.8, 0.9],
    "cold_item_fraction": 0.0,
}
SEED = 42


def _tree_rss(pid: int) -> int:
    """Return the resident memory of process `pid` and all its descendants, in bytes."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/statm") as statm:
                total += int(statm.read().split()[1]) * _PAGE
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class PeakTreeMemory:
    """Samples the resident memory of this process tree every few milliseconds."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            time.sleep(self.interval)

    def __enter__(self) -> PeakTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def stage(name: str, stages: list) -> Iterator[None]:
    """Time the block as one stage."""
    start = time.perf_counter()
    yield
    stages.append({"stage": name, "seconds": round(time.perf_counter() - start, 2)})


def run_pandas(raw_path: Path, out: Path, ingestion: dict) -> dict:
    """Prepare with the pandas path's node functions, writing each table; return timings."""
    import pandas as pd

    from twotower_pipeline.pipelines.ingestion.nodes import encode, validate
    from twotower_pipeline.pipelines.split.nodes import split

    stages: list[dict] = []
    start = time.perf_counter()

    def write(**frames: pd.DataFrame) -> None:
        for name, frame in frames.items():
            frame.to_parquet(out / f"{name}.parquet", index=False)

    with stage("read raw", stages):
        raw = pd.read_parquet(raw_path)
    with stage("validate", stages):
        clean, report = validate(raw, ingestion)
    del raw
    with stage("write clean", stages):
        write(clean_interactions=clean)
    with stage("encode ids", stages):
        interactions, users, items = encode(clean)
    del clean
    with stage("write interactions", stages):
        write(interactions=interactions, user_index=users, item_index=items)
    with stage("split", stages):
        train, val, test, cold, split_report = split(interactions, dict(SPLIT), SEED)
    with stage("write split", stages):
        write(
            train_interactions=train,
            val_interactions=val,
            test_interactions=test,
            test_cold_interactions=cold,
        )
    return {
        "stages": stages,
        "seconds": round(time.perf_counter() - start, 2),
        "report": report,
        "split_report": split_report,
    }


def run_spark(raw_path: Path, out: Path, ingestion: dict, master: str, memory: str) -> dict:
    """Prepare with the Spark path's node functions, writing each table; return timings.

    Spark is lazy: each stage's time includes the writes that make it run, as
    Kedro's saves do; SparkSession start-up is timed apart.
    """
    from twotower_pipeline.pipelines.spark_data_processing.nodes import (
        encode_on_spark,
        split_on_spark,
        validate_on_spark,
    )
    from twotower_pipeline.spark.session import start_spark_session

    stages: list[dict] = []
    conf = {
        "spark.master": master,
        "spark.driver.memory": memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "8",
        "spark.ui.showConsoleProgress": "false",
    }
    with stage("start SparkSession", stages):
        spark = start_spark_session(conf)
    start = time.perf_counter()

    def write(**frames) -> None:
        for name, frame in frames.items():
            frame.write.mode("overwrite").parquet(str(out / f"{name}.parquet"))

    with stage("validate + write clean", stages):
        clean, report = validate_on_spark(spark.read.parquet(str(raw_path)), ingestion)
        write(clean_interactions=clean)
    with stage("encode ids + write", stages):
        clean = spark.read.parquet(str(out / "clean_interactions.parquet"))
        interactions, users, items = encode_on_spark(clean)
        write(interactions=interactions, user_index=users, item_index=items)
    with stage("split + write", stages):
        interactions = spark.read.parquet(str(out / "interactions.parquet"))
        train, val, test, cold, split_report = split_on_spark(interactions, dict(SPLIT), SEED)
        write(
            train_interactions=train,
            val_interactions=val,
            test_interactions=test,
            test_cold_interactions=cold,
        )
    seconds = round(time.perf_counter() - start, 2)
    spark.stop()
    return {"stages": stages, "seconds": seconds, "report": report, "split_report": split_report}


def child(args: argparse.Namespace) -> None:
    """Run one engine in this process and print its result as one JSON line."""
    ingestion = {
        "source": str(args.raw),
        "columns": {"user": "userId", "item": "movieId", "timestamp": "timestamp"},
        "timestamp_unit": "auto",
    }
    out = Path(tempfile.mkdtemp(prefix=f"prep_{args.engine}_", dir=args.raw.parent))
    with PeakTreeMemory() as memory:
        if args.engine == "pandas":
            result = run_pandas(args.raw, out, ingestion)
        else:
            result = run_spark(args.raw, out, ingestion, args.master, args.driver_memory)
    result["peak_gb"] = round(memory.peak / 2**30, 2)
    shutil.rmtree(out)
    print("RESULT " + json.dumps(result, default=str), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=25_000_000)
    parser.add_argument("--users", type=int, default=162_000)
    parser.add_argument("--items", type=int, default=59_000)
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--engines", default="pandas,spark")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        child(args)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_prep import ml25m_shaped_log

    tmp = Path(tempfile.mkdtemp(prefix="data_prep_spark_"))
    raw_path = tmp / "ratings.parquet"
    print(f"generating an ML-25M-shaped log: {args.interactions:,} rows ...", flush=True)
    ml25m_shaped_log(args.interactions, args.users, args.items).to_parquet(raw_path, index=False)

    results = {}
    for engine in args.engines.split(","):
        print(f"{engine} ...", flush=True)
        command = [sys.executable, __file__, "--engine", engine, "--raw", str(raw_path)]
        command += ["--master", args.master, "--driver-memory", args.driver_memory]
        finished = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
        if finished.returncode or not lines:
            sys.exit(f"{engine} failed:\n{finished.stderr[-3000:]}")
        results[engine] = json.loads(lines[-1][len("RESULT ") :])
    shutil.rmtree(tmp)

    print(f"\n{'engine':<8} {'stage':<24} {'seconds':>8}")
    for engine, result in results.items():
        for stage in result["stages"]:
            print(f"{engine:<8} {stage['stage']:<24} {stage['seconds']:8.2f}")
        print(
            f"{engine:<8} {'whole preparation':<24} {result['seconds']:8.2f}   "
            f"peak {result['peak_gb']:.2f} GB (process tree)"
        )
    same = None
    if {"pandas", "spark"} <= results.keys():
        keys = ("interactions", "users", "items", "rows_dropped")
        same = all(results["pandas"]["report"][k] == results["spark"]["report"][k] for k in keys)
        same &= results["pandas"]["split_report"] == results["spark"]["split_report"]
        print(f"same ingestion counts and split report on both engines: {same}")
    summary = {
        "log": {
            "rows": args.interactions,
            "users": args.users,
            "items": args.items,
            "interactions": next(iter(results.values()))["report"]["interactions"],
        },
        "engines": {
            engine: {
                "stages": result["stages"],
                "whole_preparation_seconds": result["seconds"],
                "peak_gb": result["peak_gb"],
            }
            for engine, result in results.items()
        },
        "same_reports": same,
        "spark": {"master": args.master, "driver_memory": args.driver_memory},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Other work on the machine slows both engines; Spark's many short jobs most.
            "load_average_1_5_15_min_at_end": [round(x, 1) for x in os.getloadavg()],
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
