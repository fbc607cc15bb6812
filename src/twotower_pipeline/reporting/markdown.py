"""What a person reads after a run: plots (matplotlib and plotly) and report.md.

report.md's sections are built in reporting/report_sections.py.

Pure functions of the run's outputs (history, metrics, health report, data
reports); nothing here reads or writes files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from plotly.subplots import make_subplots

from twotower_pipeline.evaluation.health import chosen_epoch, constant_predictor_loss
from twotower_pipeline.reporting.report_sections import (
    RunOutputs,
    baselines_section,
    cold_section,
    curve_section,
    data_section,
    health_section,
    number,
    scored,
    split_section,
    validation_section,
)

COLOURS = {"model": "#1f77b4", "popularity": "#ff7f0e", "random": "#7f7f7f", "als": "#2ca02c"}


# --- plots -------------------------------------------------------------------------


def learning_curve(
    history: pd.DataFrame, neg_ratio: int, initial_scale: float | None = None
) -> tuple[Figure, go.Figure]:
    """Return train/val loss and logit scale per epoch, as a matplotlib and a plotly figure.

    With initial_scale the scale curve starts at epoch 0, where training started it.
    """
    floor = constant_predictor_loss(neg_ratio)
    scale_epochs, scales = history["epoch"].tolist(), history["logit_scale"].tolist()
    if initial_scale is not None:
        scale_epochs, scales = [0, *scale_epochs], [initial_scale, *scales]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(history["epoch"], history["train_loss"], "o-", label="train loss")
    ax.plot(history["epoch"], history["val_loss"], "s-", label="validation loss")
    ax.axhline(floor, color="grey", ls="--", lw=1, label=f"constant guess ({floor:.3f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"BCE (positives + {neg_ratio} negatives each)")
    scale_ax = ax.twinx()
    scale_ax.plot(scale_epochs, scales, "^:", color="tab:red", label="logit scale")
    scale_ax.set_ylabel("logit scale", color="tab:red")
    lines = ax.get_legend_handles_labels()
    scale_lines = scale_ax.get_legend_handles_labels()
    ax.legend(lines[0] + scale_lines[0], lines[1] + scale_lines[1], loc="center right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Learning curve")

    plot = make_subplots(specs=[[{"secondary_y": True}]])
    plot.add_scatter(x=history["epoch"], y=history["train_loss"], name="train loss")
    plot.add_scatter(x=history["epoch"], y=history["val_loss"], name="validation loss")
    plot.add_scatter(
        x=history["epoch"],
        y=[floor] * len(history),
        name="constant guess",
        line={"dash": "dash", "color": "grey"},
    )
    plot.add_scatter(
        x=scale_epochs,
        y=scales,
        name="logit scale",
        line={"dash": "dot", "color": "red"},
        secondary_y=True,
    )
    plot.update_layout(title="Learning curve", xaxis_title="epoch")
    plot.update_yaxes(title_text="BCE", secondary_y=False)
    plot.update_yaxes(title_text="logit scale", secondary_y=True)
    return fig, plot


def ranking_curve(history: pd.DataFrame, validation: dict, k: int) -> tuple[Figure, go.Figure]:
    """Return validation Recall@k and NDCG@k per epoch, popularity's as reference lines.

    validation is evaluation_metrics["validation"]: the per-epoch figures are
    on validation users, so popularity's reference is too. The persisted
    (chosen) epoch is marked.
    """
    metrics = [m for m in (f"recall@{k}", f"ndcg@{k}") if m in history]
    popularity = validation.get("popularity", {})
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    plot = go.Figure()
    for metric, colour in zip(metrics, ("tab:blue", "tab:green"), strict=False):
        ax.plot(history["epoch"], history[metric], "o-", color=colour, label=f"model {metric}")
        plot.add_scatter(x=history["epoch"], y=history[metric], name=f"model {metric}")
        if metric in popularity:
            ax.axhline(
                popularity[metric], color=colour, ls="--", lw=1, label=f"popularity {metric}"
            )
            plot.add_scatter(
                x=history["epoch"],
                y=[popularity[metric]] * len(history),
                name=f"popularity {metric}",
                line={"dash": "dash"},
            )
    chosen = chosen_epoch(history)
    if chosen is not None:
        ax.axvline(chosen, color="grey", ls=":", lw=1, label=f"chosen epoch ({chosen})")
        plot.add_vline(x=chosen, line_dash="dot", line_color="grey")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("full-catalogue metric")
    ax.legend()
    ax.set_title(f"Ranking metrics per epoch (validation users, K={k})")
    plot.update_layout(
        title=f"Ranking metrics per epoch (validation users, K={k})", xaxis_title="epoch"
    )
    return fig, plot


def model_vs_baselines(comparison: dict, ks: Sequence[int]) -> tuple[Figure, go.Figure]:
    """Return test HitRate@K and NDCG@K of the model and each baseline, grouped by K."""
    names = scored(comparison)
    fig = Figure(figsize=(9, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    plot = make_subplots(rows=1, cols=2, subplot_titles=("HitRate@K", "NDCG@K"))
    width = 0.8 / max(len(names), 1)
    for col, family in enumerate(("hit_rate", "ndcg")):
        for i, name in enumerate(names):
            values = [comparison[name].get(f"{family}@{k}", math.nan) for k in ks]
            positions = [j + (i - (len(names) - 1) / 2) * width for j in range(len(ks))]
            axes[col].bar(positions, values, width, label=name, color=COLOURS[name])
            plot.add_bar(
                x=[f"K={k}" for k in ks],
                y=values,
                name=name,
                marker_color=COLOURS[name],
                showlegend=col == 0,
                legendgroup=name,
                row=1,
                col=col + 1,
            )
        axes[col].set_xticks(range(len(ks)), [f"K={k}" for k in ks])
        axes[col].set_title("HitRate@K" if family == "hit_rate" else "NDCG@K")
    axes[0].legend()
    users = comparison["model"].get("users")
    fig.suptitle(f"Model vs baselines on test ({number(users)} users, same protocol)")
    plot.update_layout(title=f"Model vs baselines on test ({number(users)} users)", barmode="group")
    return fig, plot


# --- report.md -----------------------------------------------------------------------


def headline(comparison: dict, health: dict, k: int) -> str:
    """Return the run's one-line summary, on test: HR@k ± one standard error, NDCG@k, verdict.

    Model first, then popularity and ALS where scored, then the model's lift
    over popularity and the health verdict.
    """
    model = comparison["model"]
    lift = comparison.get("lift_over_popularity", {}).get(f"hit_rate@{k}")
    se = model.get(f"hit_rate_se@{k}")
    parts = [
        f"test ({number(model.get('users'))} users): model HR@{k} "
        f"{model[f'hit_rate@{k}']:.4f}"
        + ("" if se is None else f" ±{se:.4f}")
        + f" NDCG@{k} {model[f'ndcg@{k}']:.4f}"
    ]
    for name in ("popularity", "als"):
        if name in scored(comparison):
            other = comparison[name]
            parts.append(
                f"{name} HR@{k} {other[f'hit_rate@{k}']:.4f} NDCG@{k} {other[f'ndcg@{k}']:.4f}"
            )
    parts.append(f"lift x{'–' if lift is None else f'{lift:.2f}'}")
    parts.append(f"health: {health['verdict']}")
    return " | ".join(parts)


def build_report(
    run: RunOutputs, neg_ratio: int, ks: Sequence[int], k: int, plot_version: str | None = None
) -> str:
    """Return report.md: data and split, the curve, model vs baselines, health with advice.

    With plot_version (the run id, the name of this run's plot version folders)
    the plots are embedded as images by their path relative to report.md. With
    run.model_selection (the training node's choice), which towers validation chose.
    """
    lines = ["# Two-tower run report", "", f"**{headline(run.comparison, run.health, k)}**", ""]
    lines += data_section(run.ingestion_report)
    lines += split_section(run.split_report)
    lines += curve_section(run, neg_ratio, k, plot_version)
    lines += baselines_section(run.comparison, ks)
    lines += validation_section(run.comparison, ks)
    lines += cold_section(run.comparison, ks)
    lines += health_section(run.health)
    return "\n".join(lines) + "\n"
