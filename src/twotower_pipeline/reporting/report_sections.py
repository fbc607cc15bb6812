"""report.md's sections, each a list of lines built from one of the run's outputs.

Shared with report.html: the scorers shown, which towers validation chose and
what was persisted. Pure functions; nothing here reads or writes files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from twotower_pipeline.evaluation.health import chosen_epoch, constant_predictor_loss

SCORERS = ("model", "popularity", "random", "als")
PLOTS = {
    "learning_curve": "Learning curve",
    "ranking_curve": "Ranking metric per epoch",
    "model_vs_baselines": "Model against the baselines",
}


@dataclass(frozen=True)
class RunOutputs:
    """The run's outputs both reports are built from.

    model_selection is the training node's choice of towers (None, or one
    candidate, when validation compared none).
    """

    ingestion_report: Mapping
    split_report: Mapping
    history: pd.DataFrame
    comparison: Mapping
    health: Mapping
    model_selection: Mapping | None = None


def scored(comparison: Mapping) -> list[str]:
    """Return the scorers in evaluation_metrics that have metrics (skipped ones left out)."""
    return [
        n for n in SCORERS if isinstance(comparison.get(n), dict) and "skipped" not in comparison[n]
    ]


def number(value) -> str:
    """Return a cell as report.md shows it: thousands for ints, four decimals for floats."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def code_span(text, in_table: bool = False) -> str:
    """Return `text` as a Markdown code span it cannot break out of (a user's path, a name).

    The fence is one backtick longer than the longest run of backticks in the
    text; a text that starts or ends with a backtick (or starts and ends with a
    space) is padded with a space each side, which CommonMark strips again.
    Newlines become spaces (a code span is one line of a report). In a table
    cell, `|` is written `\\|`, which GitHub's tables read as a `|` of the span
    (backslashes just before it are doubled, so none of them unescapes it: such
    a backslash then shows twice).
    """
    text = re.sub(r"\r\n|\r|\n", " ", str(text))
    if in_table:
        text = re.sub(r"(\\*)\|", lambda m: m.group(1) * 2 + "\\|", text)
    runs = re.findall(r"`+", text)
    fence = "`" * (max((len(run) for run in runs), default=0) + 1)
    if not text.strip(" "):
        return f"{fence}{text or ' '}{fence}"
    if text.startswith("`") or text.endswith("`") or (text[0] == " " and text[-1] == " "):
        text = f" {text} "
    return f"{fence}{text}{fence}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """Return the lines of a markdown table, cells formatted by number()."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(number(v) for v in row) + " |" for row in rows]
    return lines


def sparkline(values: Sequence[float]) -> str:
    """Return the values as a line of block characters, lowest ▁ to highest █ (? if not finite)."""
    bars = "▁▂▃▄▅▆▇█"
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    return "".join(bars[round((v - low) / span * 7)] if math.isfinite(v) else "?" for v in values)


def metric_names(ks: Sequence[int]) -> list[str]:
    """Return the metric rows of a comparison table: MRR, then each family at each K."""
    names = ["mrr"]
    for family in ("hit_rate", "hit_rate_se", "recall", "ndcg", "coverage"):
        names += [f"{family}@{k}" for k in ks]
    return names


def comparison_table(section: Mapping, ks: Sequence[int], reference: str) -> list[str]:
    """Return the markdown table of one evaluation set: a column per scorer, then the lift."""
    names = scored(section)
    lift = section.get(f"lift_over_{reference}", {})
    rows = [
        [m, *[section[n].get(m) for n in names], lift.get(m)]
        for m in metric_names(ks)
        if any(m in section[n] for n in names)
    ]
    return markdown_table(["metric", *names, f"lift over {reference}"], rows)


def selection_table(selection: Mapping | None) -> tuple[str, list[str], list[list]] | None:
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


def persisted_model_sentence(selection: Mapping | None, chosen: int) -> str:
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


def data_section(ingestion_report: Mapping) -> list[str]:
    """Return the "Data" section: what ingestion read, kept and dropped."""
    dropped = ingestion_report.get("rows_dropped", {})
    return [
        "## Data",
        "",
        *markdown_table(
            ["", ""],
            [
                ["source", code_span(ingestion_report.get("source", "?"), in_table=True)],
                ["rows read", ingestion_report.get("rows_read")],
                ["interactions", ingestion_report.get("interactions")],
                ["users", ingestion_report.get("users")],
                ["items", ingestion_report.get("items")],
                ["density", ingestion_report.get("density")],
                ["time span", " to ".join(map(str, ingestion_report.get("time_span", [])))],
                *[[f"dropped: {reason}", count] for reason, count in dropped.items()],
            ],
        ),
    ]


# (row label, split_report key) of the "Split" section, in order.
SPLIT_ROWS = (
    ("strategy", "strategy"),
    ("train interactions", "train_interactions"),
    ("validation positives", "val_interactions"),
    ("validation users", "val_users"),
    ("test positives", "test_interactions"),
    ("test users", "test_users"),
    ("test rows with a cold item (scored apart)", "test_cold_interactions"),
    (
        "users without a validation row (too few interactions, or dropped)",
        "users_without_validation",
    ),
    ("users without a test row (too few interactions, cold, or dropped)", "users_without_test"),
    ("validation rows dropped (item unseen in train)", "val_dropped_cold_items"),
    ("validation rows dropped (user unseen in train)", "val_dropped_cold_users"),
    ("test rows dropped (user unseen in train)", "test_dropped_cold_users"),
    ("items held out of train (split.cold_item_fraction)", "cold_items_held_out"),
)


def split_section(split_report: Mapping) -> list[str]:
    """Return the "Split" section: the sizes of train, validation and test, and what was dropped."""
    # Older split reports name users without a validation row users_in_train_only.
    without_validation = split_report.get(
        "users_without_validation", split_report.get("users_in_train_only")
    )
    values = {**split_report, "users_without_validation": without_validation}
    rows = [[label, values.get(key)] for label, key in SPLIT_ROWS]
    return ["", "## Split", "", *markdown_table(["", ""], rows)]


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


def _selection_lines(selection: Mapping | None) -> list[str]:
    """Return the report's lines on which model block validation chose (none for one)."""
    shown = selection_table(selection)
    if shown is None:
        return []
    text, header, rows = shown
    return [text, "", *markdown_table(header, rows), ""]


def _history_table(history: pd.DataFrame, k: int, chosen: int | None) -> list[str]:
    """Return the per-epoch table, the persisted epoch marked ✓."""
    columns = ("epoch", "train_loss", "val_loss", "val_auc", f"recall@{k}", f"ndcg@{k}")
    curve_columns = [c for c in (*columns, "logit_scale") if c in history]
    return markdown_table(
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


def curve_section(
    run: RunOutputs, neg_ratio: int, k: int, plot_version: str | None = None
) -> list[str]:
    """Return the "Training curve" section: losses, plots, the towers chosen, each epoch."""
    history = run.history
    floor = constant_predictor_loss(neg_ratio)
    lines = [
        "",
        "## Training curve",
        "",
        f"Losses are BCE on positives plus {neg_ratio} sampled negatives each (the "
        f"validation negatives are a fixed seeded sample). A constant guess at the base "
        f"rate scores {floor:.4f}.",
        "",
        f"- train loss `{sparkline(history['train_loss'].tolist())}`",
        f"- val loss   `{sparkline(history['val_loss'].tolist())}`",
        "",
        *_plot_images(plot_version),
        "",
    ]
    lines += _selection_lines(run.model_selection)
    chosen = chosen_epoch(history)
    if chosen is not None:
        lines += [persisted_model_sentence(run.model_selection, chosen), ""]
    return lines + _history_table(history, k, chosen)


def _pointwise_line(metrics: Mapping, prefix: str, held_out: str) -> list[str]:
    """Return the line on log loss and AUC of one set's sampled pairs (none if not scored)."""
    if f"{prefix}_log_loss" not in metrics:
        return []
    return [
        "",
        f"Pointwise, on {number(metrics.get(f'{prefix}_sample_positives'))} {held_out} "
        f"positives + {number(metrics.get(f'{prefix}_sample_negatives'))} sampled "
        f"negatives: log loss {metrics[f'{prefix}_log_loss']:.4f}, "
        f"AUC {metrics[f'{prefix}_auc']:.4f}.",
    ]


def baselines_section(comparison: Mapping, ks: Sequence[int]) -> list[str]:
    """Return the "Model vs baselines (test)" section: the table, skipped scorers, pointwise."""
    model = comparison["model"]
    lines = [
        "",
        "## Model vs baselines (test)",
        "",
        f"Every scorer ranks the full catalogue for the same "
        f"{number(model.get('users'))} test users, their training and validation items "
        "masked, ties broken at random (seeded). The baselines are fitted on train only. "
        "Lift = model / popularity; hit_rate_se is one standard error, sqrt(p(1-p)/n).",
        "",
        *comparison_table(comparison, ks, "popularity"),
    ]
    skipped = [
        f"- {n}: skipped ({comparison[n]['skipped']})"
        for n in SCORERS
        if isinstance(comparison.get(n), dict) and "skipped" in comparison[n]
    ]
    if skipped:
        lines += ["", *skipped]
    return lines + _pointwise_line(model, "test", "test")


def validation_section(comparison: Mapping, ks: Sequence[int]) -> list[str]:
    """Return the "Validation" section (none when the metrics have no validation set)."""
    validation = comparison.get("validation")
    if not isinstance(validation, dict) or "model" not in validation:
        return []
    val_model = validation["model"]
    return [
        "",
        "## Validation (what chose the epoch)",
        "",
        f"The same protocol on {number(val_model.get('users'))} validation users, "
        "training items masked. Validation chose the persisted model (and the defaults), "
        "so its figures flatter the model a little; test is the figure to quote.",
        "",
        *comparison_table(validation, ks, "popularity"),
        *_pointwise_line(val_model, "val", "validation"),
    ]


def cold_section(comparison: Mapping, ks: Sequence[int]) -> list[str]:
    """Return the report lines of the cold-start sets (or why there are none)."""
    cold, full = comparison.get("cold_items"), comparison.get("cold_items_full")
    if not isinstance(cold, dict) or not isinstance(full, dict):
        return []
    lines = ["", "## Cold items (test)", ""]
    if "skipped" in cold.get("model", {}):
        return lines + [f"No cold-start figures: {cold['model']['skipped']}."]
    lines += [
        f"Test users whose held-out item has no training interaction "
        f"({number(cold['model'].get('users'))} users). Among the cold items only (what a "
        '"new arrivals" slot would show); lift = model / random:',
        "",
    ]
    lines += comparison_table(cold, ks, "random")
    lines += ["", "The same rows ranked against the full catalogue:", ""]
    lines += comparison_table(full, ks, "random")
    return lines


def health_section(health: Mapping) -> list[str]:
    """Return the "Health" section: the verdict, each flag, and what to do for a raised one."""
    lines = ["", "## Health", "", f"Verdict: **{health['verdict']}**", ""]
    for flag in health["flags"]:
        mark = "⚠️ RAISED" if flag["raised"] else "ok"
        lines.append(f"- **{flag['name']}** ({mark}): {flag['message']}")
        if flag["raised"]:
            lines.append(f"  - what to do: {flag['advice']}")
    return lines
