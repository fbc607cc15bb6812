"""What a person reads after a run: plots (matplotlib and plotly) and report.md.

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

SCORERS = ("model", "popularity", "random", "als")
COLOURS = {"model": "#1f77b4", "popularity": "#ff7f0e", "random": "#7f7f7f", "als": "#2ca02c"}


def scored(comparison: dict) -> list[str]:
    """Return the scorers in evaluation_metrics that have metrics (skipped ones left out)."""
    return [
        n for n in SCORERS if isinstance(comparison.get(n), dict) and "skipped" not in comparison[n]
    ]


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
    fig.suptitle(f"Model vs baselines on test ({_number(users)} users, same protocol)")
    plot.update_layout(
        title=f"Model vs baselines on test ({_number(users)} users)", barmode="group"
    )
    return fig, plot


# --- report.md -----------------------------------------------------------------------


def _number(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(v) for v in row) + " |" for row in rows]
    return lines


def _sparkline(values: Sequence[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    return "".join(bars[round((v - low) / span * 7)] if math.isfinite(v) else "?" for v in values)


def headline(comparison: dict, health: dict, k: int) -> str:
    """Return the run's one-line summary, on test: HR@k ± one standard error, NDCG@k, verdict.

    Model first, then popularity and ALS where scored, then the model's lift
    over popularity and the health verdict.
    """
    model = comparison["model"]
    lift = comparison.get("lift_over_popularity", {}).get(f"hit_rate@{k}")
    se = model.get(f"hit_rate_se@{k}")
    parts = [
        f"test ({_number(model.get('users'))} users): model HR@{k} "
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


def metric_names(ks: Sequence[int]) -> list[str]:
    names = ["mrr"]
    for family in ("hit_rate", "hit_rate_se", "recall", "ndcg", "coverage"):
        names += [f"{family}@{k}" for k in ks]
    return names


def _comparison_table(section: dict, ks: Sequence[int], reference: str) -> list[str]:
    """Return the markdown table of one evaluation set: a column per scorer, then the lift."""
    names = scored(section)
    lift = section.get(f"lift_over_{reference}", {})
    rows = [
        [m, *[section[n].get(m) for n in names], lift.get(m)]
        for m in metric_names(ks)
        if any(m in section[n] for n in names)
    ]
    return _table(["metric", *names, f"lift over {reference}"], rows)


def _cold_section(comparison: dict, ks: Sequence[int]) -> list[str]:
    """Return the report lines of the cold-start sets (or why there are none)."""
    cold, full = comparison.get("cold_items"), comparison.get("cold_items_full")
    if not isinstance(cold, dict) or not isinstance(full, dict):
        return []
    lines = ["", "## Cold items (test)", ""]
    if "skipped" in cold.get("model", {}):
        return lines + [f"No cold-start figures: {cold['model']['skipped']}."]
    lines += [
        f"Test users whose held-out item has no training interaction "
        f"({_number(cold['model'].get('users'))} users). Among the cold items only (what a "
        '"new arrivals" slot would show); lift = model / random:',
        "",
    ]
    lines += _comparison_table(cold, ks, "random")
    lines += ["", "The same rows ranked against the full catalogue:", ""]
    lines += _comparison_table(full, ks, "random")
    return lines


PLOTS = {
    "learning_curve": "Learning curve",
    "ranking_curve": "Ranking metric per epoch",
    "model_vs_baselines": "Model against the baselines",
}


def _plot_images(version: str | None) -> list[str]:
    """Return report.md lines showing this run's plots, by path relative to report.md."""
    if version is None:
        return [
            "Plots (versioned; the newest folder is this run): "
            "`data/08_reporting/learning_curve.png/`, `ranking_curve.png/`, "
            "`model_vs_baselines.png/` (and `.json` plotly versions for kedro-viz)."
        ]
    # Beside report.md, each plot is a folder of versions named after the run id.
    return [f"![{title}]({name}.png/{version}/{name}.png)" for name, title in PLOTS.items()]


def selection_table(selection: dict | None) -> tuple[str, list[str], list[list]] | None:
    """Return (text, header, rows) on the towers validation compared; None for one candidate.

    Shared by report.md and report.html.
    """
    if not selection or len(selection.get("candidates", [])) < 2:
        return None
    metric = selection["metric"]
    text = (
        f"Validation chose the towers: each candidate trained with the same seed, the best "
        f"{metric} of its kept epoch wins; the curve below is the chosen one's."
    )
    if any(c["name"] == "ensemble" for c in selection["candidates"]):
        text += (
            " `ensemble` scores the candidates' kept epochs together (the mean of their "
            "logits: one two-tower model at the members' summed size); chosen, its curve is "
            "that of its best member."
        )
    rows = []
    for candidate in selection["candidates"]:
        changes = ", ".join(f"{key}: {value}" for key, value in candidate["model"].items())
        kept = candidate["kept_epoch"]
        rows.append(
            [
                candidate["name"],
                changes or "(conf as given)",
                "each member's" if kept is None else kept,
                float(candidate[next(key for key in candidate if key.startswith("validation_"))]),
                "✓" if candidate["chosen"] else "",
            ]
        )
    return text, ["towers", "model", "kept epoch", metric, "chosen"], rows


def persisted_model_sentence(selection: dict | None, chosen: int) -> str:
    """Return one sentence on what was persisted: an epoch, or the ensemble of kept epochs.

    chosen is the curve's kept epoch (for an ensemble, its best member's).
    """
    candidates = (selection or {}).get("candidates", [])
    if any(c["name"] == "ensemble" and c["chosen"] for c in candidates):
        kept = [c for c in candidates if c["kept_epoch"] is not None]
        members = ", ".join(f"{c['name']} epoch {c['kept_epoch']}" for c in kept)
        return (
            f"The persisted model is the ensemble: the candidates' kept epochs ({members}) "
            f"scored together. The curve is its best member's (epoch {chosen} marked ✓); "
            "every test figure below is the ensemble's."
        )
    return (
        f"The persisted model is epoch {chosen}'s, the best on validation "
        "(marked ✓); every figure below is that model's."
    )


def _selection_lines(selection: dict | None) -> list[str]:
    """Return the report's lines on which model block validation chose (none for one)."""
    shown = selection_table(selection)
    if shown is None:
        return []
    text, header, rows = shown
    return [text, "", *_table(header, rows), ""]


def build_report(
    ingestion_report: dict,
    split_report: dict,
    history: pd.DataFrame,
    comparison: dict,
    health: dict,
    neg_ratio: int,
    ks: Sequence[int],
    k: int,
    plot_version: str | None = None,
    model_selection: dict | None = None,
) -> str:
    """Return report.md: data and split, the curve, model vs baselines, health with advice.

    With plot_version (the run id, the name of this run's plot version folders)
    the plots are embedded as images by their path relative to report.md. With
    model_selection (the training node's choice), which towers validation chose.
    """
    lines = ["# Two-tower run report", "", f"**{headline(comparison, health, k)}**", ""]

    lines += ["## Data", ""]
    dropped = ingestion_report.get("rows_dropped", {})
    lines += _table(
        ["", ""],
        [
            ["source", f"`{ingestion_report.get('source', '?')}`"],
            ["rows read", ingestion_report.get("rows_read")],
            ["interactions", ingestion_report.get("interactions")],
            ["users", ingestion_report.get("users")],
            ["items", ingestion_report.get("items")],
            ["density", ingestion_report.get("density")],
            ["time span", " to ".join(map(str, ingestion_report.get("time_span", [])))],
            *[[f"dropped: {reason}", count] for reason, count in dropped.items()],
        ],
    )
    lines += ["", "## Split", ""]
    lines += _table(
        ["", ""],
        [
            ["strategy", split_report.get("strategy")],
            ["train interactions", split_report.get("train_interactions")],
            ["validation positives", split_report.get("val_interactions")],
            ["validation users", split_report.get("val_users")],
            ["test positives", split_report.get("test_interactions")],
            ["test users", split_report.get("test_users")],
            [
                "test rows with a cold item (scored apart)",
                split_report.get("test_cold_interactions"),
            ],
            [
                "users without a validation row (too few interactions, or dropped)",
                split_report.get(
                    "users_without_validation", split_report.get("users_in_train_only")
                ),
            ],
            [
                "users without a test row (too few interactions, cold, or dropped)",
                split_report.get("users_without_test"),
            ],
            [
                "validation rows dropped (item unseen in train)",
                split_report.get("val_dropped_cold_items"),
            ],
            [
                "validation rows dropped (user unseen in train)",
                split_report.get("val_dropped_cold_users"),
            ],
            [
                "test rows dropped (user unseen in train)",
                split_report.get("test_dropped_cold_users"),
            ],
            [
                "items held out of train (split.cold_item_fraction)",
                split_report.get("cold_items_held_out"),
            ],
        ],
    )

    floor = constant_predictor_loss(neg_ratio)
    lines += [
        "",
        "## Training curve",
        "",
        f"Losses are BCE on positives plus {neg_ratio} sampled negatives each (the "
        f"validation negatives are a fixed seeded sample). A constant guess at the base "
        f"rate scores {floor:.4f}.",
        "",
        f"- train loss `{_sparkline(history['train_loss'].tolist())}`",
        f"- val loss   `{_sparkline(history['val_loss'].tolist())}`",
        "",
        *_plot_images(plot_version),
        "",
    ]
    curve_columns = [
        c
        for c in (
            "epoch",
            "train_loss",
            "val_loss",
            "val_auc",
            f"recall@{k}",
            f"ndcg@{k}",
            "logit_scale",
        )
        if c in history
    ]
    lines += _selection_lines(model_selection)
    chosen = chosen_epoch(history)
    if chosen is not None:
        lines += [persisted_model_sentence(model_selection, chosen), ""]
    lines += _table(
        curve_columns + ["chosen"],
        [
            [
                int(row["epoch"]),
                *[float(row[c]) for c in curve_columns[1:]],
                "✓" if int(row["epoch"]) == chosen else "",
            ]
            for _, row in history.iterrows()
        ],
    )

    model = comparison["model"]
    lines += [
        "",
        "## Model vs baselines (test)",
        "",
        f"Every scorer ranks the full catalogue for the same "
        f"{_number(model.get('users'))} test users, their training and validation items "
        "masked, ties broken at random (seeded). The baselines are fitted on train only. "
        "Lift = model / popularity; hit_rate_se is one standard error, sqrt(p(1-p)/n).",
        "",
    ]
    lines += _comparison_table(comparison, ks, "popularity")
    skipped = [
        f"- {n}: skipped ({comparison[n]['skipped']})"
        for n in SCORERS
        if isinstance(comparison.get(n), dict) and "skipped" in comparison[n]
    ]
    if skipped:
        lines += ["", *skipped]
    if "test_log_loss" in model:
        lines += [
            "",
            f"Pointwise, on {_number(model.get('test_sample_positives'))} test positives + "
            f"{_number(model.get('test_sample_negatives'))} sampled negatives: "
            f"log loss {model['test_log_loss']:.4f}, AUC {model['test_auc']:.4f}.",
        ]

    validation = comparison.get("validation")
    if isinstance(validation, dict) and "model" in validation:
        val_model = validation["model"]
        lines += [
            "",
            "## Validation (what chose the epoch)",
            "",
            f"The same protocol on {_number(val_model.get('users'))} validation users, "
            "training items masked. Validation chose the persisted model (and the defaults), "
            "so its figures flatter the model a little; test is the figure to quote.",
            "",
        ]
        lines += _comparison_table(validation, ks, "popularity")
        if "val_log_loss" in val_model:
            lines += [
                "",
                f"Pointwise, on {_number(val_model.get('val_sample_positives'))} validation "
                f"positives + {_number(val_model.get('val_sample_negatives'))} sampled "
                f"negatives: log loss {val_model['val_log_loss']:.4f}, "
                f"AUC {val_model['val_auc']:.4f}.",
            ]

    lines += _cold_section(comparison, ks)

    lines += ["", "## Health", "", f"Verdict: **{health['verdict']}**", ""]
    for flag in health["flags"]:
        mark = "⚠️ RAISED" if flag["raised"] else "ok"
        lines.append(f"- **{flag['name']}** ({mark}): {flag['message']}")
        if flag["raised"]:
            lines.append(f"  - what to do: {flag['advice']}")
    return "\n".join(lines) + "\n"
