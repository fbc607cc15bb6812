"""Plot a training_history table: losses, logit scale and Recall@10 per epoch.

    python benchmarks/plot_learning_curve.py data/08_reporting/training_history.parquet \
        docs/img/learning_curve.png [--title "default synthetic data"]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

BASE_RATE_LOSS = 0.4506  # BCE of the constant predictor at neg_ratio 5


def plot(history: pd.DataFrame, title: str):
    """Return a figure: BCE (train, val) with the base-rate line; scale and Recall@10."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(history["epoch"], history["train_loss"], "o-", label="train loss")
    left.plot(history["epoch"], history["val_loss"], "s-", label="val loss (pos + 5 neg)")
    left.axhline(BASE_RATE_LOSS, color="grey", ls="--", lw=1, label="constant predictor 0.4506")
    left.set(xlabel="epoch", ylabel="BCE", title=f"loss, {title}", ylim=(0, 0.8))
    left.legend(fontsize=8)
    right.plot(history["epoch"], history["recall@10"], "o-", color="tab:green", label="Recall@10")
    right.set(xlabel="epoch", ylabel="Recall@10 (full catalogue)", title="ranking and scale")
    scale = right.twinx()
    scale.plot(
        history["epoch"], history["logit_scale"], "^--", color="tab:red", label="logit scale"
    )
    scale.set_ylabel("learned logit scale")
    lines = right.get_legend_handles_labels()[0] + scale.get_legend_handles_labels()[0]
    right.legend(lines, ["Recall@10", "logit scale"], fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--title", default="default synthetic data")
    args = parser.parse_args()
    history = pd.read_parquet(args.history) if args.history.suffix == ".parquet" else None
    if history is None:
        import json

        history = pd.DataFrame(json.loads(args.history.read_text())["history"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plot(history, args.title).savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
