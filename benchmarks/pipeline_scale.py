"""The whole `kedro run` at multiples of the default size: time per node and peak memory.

The embedded default is a synthetic world of 5,000 users x 2,000 items (about
200,000 interactions). This benchmark runs the unchanged pipeline on worlds
k times that size in users and items (so about k times the interactions) as a
plain `kedro run --env=scale_<k>x --params=num_epochs=<epochs>` in a temporary
copy of the project, and reads each node's seconds from the run's log and the
run's peak resident memory from the kernel (wait4), and each node's own peak
(the process's high-water mark, reset before each node). Only the epoch count is
changed (3 by default, to keep the larger runs in minutes): the training rows
report seconds per epoch, so a 20-epoch run's cost follows.

The synthetic log is generated first, by a run of its first node alone, and
timed apart (`generation_seconds`): the pipeline's own time is that of a log
that exists, as a user's does. `--workdir` keeps the copy, so a second run
reuses the generated log.

Prints a table and writes benchmarks/results/pipeline_scale.json.

    python benchmarks/pipeline_scale.py [--multiples 1,10] [--epochs 3]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from untuned import kedro_run, latest, make_project, synthetic_env, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_USERS, DEFAULT_ITEMS = 5_000, 2_000
# "[8/19] training.train_two_tower (76.6 s, peak 1,234 MB): ..." (hooks/node_logging.py)
NODE_LINE = re.compile(r"\[\d+/\d+\] ([\w.]+) \(([\d.]+) s(?:, peak ([\d,]+) MB)?\)")


def run(project: Path, multiple: int, epochs: int) -> dict:
    env = f"scale_{multiple}x"
    conf = project / "conf" / env
    files = synthetic_env(
        env, {"n_users": DEFAULT_USERS * multiple, "n_items": DEFAULT_ITEMS * multiple}
    )
    conf.mkdir(exist_ok=True)
    for file, content in files.items():
        (conf / file).write_text(yaml.safe_dump(content, sort_keys=False))
    # The synthetic log is generated on its first load and kept (data/01_raw): a user's own
    # log is read, not generated, so the generation is timed on its own, first.
    started = time.perf_counter()
    kedro_run(project, f"--env={env}", "--nodes=ingestion.validate_interactions")
    generation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    log, peak_mb = kedro_run(project, f"--env={env}", f"--params=num_epochs={epochs}")
    seconds = time.perf_counter() - started
    reporting = project / "data" / env / "08_reporting"
    report = latest(reporting / "ingestion_report.json")
    history = pd.read_parquet(reporting / "training_history.parquet")
    metrics = latest(reporting / "evaluation_metrics.json")
    lines = NODE_LINE.findall(log)
    nodes = {name: float(s) for name, s, _ in lines}
    node_peaks = {name: float(mb.replace(",", "")) for name, _, mb in lines if mb}
    return {
        "multiple": multiple,
        "n_users": DEFAULT_USERS * multiple,
        "n_items": DEFAULT_ITEMS * multiple,
        "interactions": report["interactions"],
        "epochs": epochs,
        "generation_seconds": generation_seconds,
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "nodes": nodes,
        "node_peak_rss_mb": node_peaks,
        "epoch_seconds": history["seconds"].round(1).tolist(),
        "examples_per_second": history["examples_per_second"].round().tolist(),
        "test_hr10": metrics["model"]["hit_rate@10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multiples", default="1,10")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "pipeline_scale.json")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the project copy (and its data) here"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipeline_scale_") as scratch:
        workdir = args.workdir or Path(scratch)
        project = workdir / "project"
        if not project.exists():
            project = make_project(workdir)
        for multiple in (int(m) for m in args.multiples.split(",")):
            row = run(project, multiple, args.epochs)
            rows.append(row)
            slowest = sorted(row["nodes"].items(), key=lambda kv: -kv[1])[:4]
            print(
                f"{multiple:>3}x  {row['n_users']:>7,d} users x {row['n_items']:>7,d} items  "
                f"{row['seconds']:6.0f} s  peak {row['peak_rss_mb']:7.0f} MB  slowest: "
                + ", ".join(f"{name} {s:.0f}s" for name, s in slowest),
                flush=True,
            )
    write_json(args.output, {"rows": rows})


if __name__ == "__main__":
    main()
