"""The run report as one self-contained HTML page: plots embedded, tables, health with advice.

Everything is inside the file (PNG plots as base64 data URIs, CSS inline, no
script), so it opens from disk, from an e-mail or from an MLflow artefact alike.
The numbers come from the same outputs as report.md (reporting/markdown.py); this module
only lays them out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from twotower_pipeline.evaluation.health import chosen_epoch
from twotower_pipeline.reporting.report_sections import (
    RunOutputs,
    persisted_model_sentence,
    selection_table,
)

FAMILIES = ("hit_rate", "recall", "ndcg", "coverage")
# The scorers of an evaluation set, in the order they are shown; others follow.
SCORER_ORDER = ("model", "popularity", "als", "random")
NOT_SCORERS = ("ann",)

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
.headline { font-size: 1.05em; background: #f6f8fa; border-left: 4px solid #0969da;
            padding: .6em .9em; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; }
tr.chosen td { background: #fff8c5; }
.flag { border: 1px solid #d0d7de; border-radius: 6px; padding: .5em .8em; margin: .5em 0; }
.flag.raised { border-color: #cf222e; background: #ffebe9; }
.flag .name { font-weight: 600; }
.ok { color: #1a7f37; } .bad { color: #cf222e; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 520px; border: 1px solid #d0d7de; }
figcaption { font-size: .9em; color: #57606a; }
details pre { background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


def figure_data_uri(figure: Any, dpi: int = 100) -> str:
    """Return a matplotlib figure as a base64 PNG data URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return _esc(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], row_classes=None) -> str:
    """Return an HTML table; cells are escaped and numbers formatted like report.md's."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{_number(v)}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def scorers(section: Mapping) -> list[str]:
    """Return the scorers of an evaluation set that have metrics, model first."""
    names = [
        n
        for n, v in section.items()
        if isinstance(v, dict)
        and "skipped" not in v
        and n not in NOT_SCORERS
        and not n.startswith("lift_over_")
        and any("@" in key or key == "mrr" for key in v)
    ]
    return sorted(names, key=lambda n: (SCORER_ORDER.index(n) if n in SCORER_ORDER else 99, n))


def metrics_table(section: Mapping, ks: Sequence[int]) -> str:
    """Return an evaluation set's metrics: a row per metric, a column per scorer, then lifts."""
    names = scorers(section)
    lifts = sorted(
        n for n in section if n.startswith("lift_over_") and isinstance(section[n], dict)
    )
    metric_names = ["mrr"] + [f"{family}@{k}" for family in FAMILIES for k in ks]
    rows = [
        [m, *[section[n].get(m) for n in names], *[section[lift].get(m) for lift in lifts]]
        for m in metric_names
        if any(m in section[n] for n in names)
    ]
    header = ["metric", *names, *[lift.replace("_", " ") for lift in lifts]]
    return table(header, rows)


def _evaluation_sets(comparison: Mapping) -> list[tuple[str, Mapping]]:
    """Return (title, set) for the headline set and any nested sets (validation, cold items)."""
    sets = [("Test", comparison)]
    for key, value in comparison.items():
        if isinstance(value, dict) and isinstance(value.get("model"), dict):
            if "skipped" in value["model"]:
                continue
            sets.append((key.replace("_", " ").capitalize(), value))
    return sets


def _health_section(health: Mapping) -> str:
    """Return the verdict, each raised flag with its message and advice, then the others."""
    parts = [f"<p>Verdict: <b>{_esc(health.get('verdict', '?'))}</b></p>"]
    flags = health.get("flags", [])
    for flag in (f for f in flags if f.get("raised")):
        parts.append(
            f'<div class="flag raised"><span class="name">{_esc(flag.get("name"))}</span> — '
            f'<span class="bad">raised</span><div>{_esc(flag.get("message", ""))}</div>'
            f"<div><i>Advice:</i> {_esc(flag.get('advice', ''))}</div></div>"
        )
    passed = [[f.get("name"), f.get("message", "")] for f in flags if not f.get("raised")]
    if passed:
        parts.append("<p>Checks that passed:</p>" + table(["check", "finding"], passed))
    return "\n".join(parts)


def _scalars(report: Mapping, prefix: str = "") -> list[list[Any]]:
    rows = []
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _scalars(value, f"{name}.")
        elif isinstance(value, list):
            rows.append([name, ", ".join(map(str, value))])
        else:
            rows.append([name, value])
    return rows


def _selection_section(selection: Mapping[str, Any] | None) -> str:
    """Return the candidates validation compared and the one it kept (nothing for one)."""
    shown = selection_table(dict(selection) if selection else None)
    if shown is None:
        return ""
    text, header, rows = shown
    classes = ["chosen" if row[-1] else "" for row in rows]
    return f"<h2>Towers validation chose</h2><p>{_esc(text)}</p>" + table(header, rows, classes)


def _history_table(history: pd.DataFrame) -> str:
    columns = [
        c
        for c in ("epoch", "train_loss", "val_loss", "val_auc", "logit_scale")
        if c in history.columns
    ]
    columns += [c for c in history.columns if c.startswith(("recall@", "ndcg@"))]
    chosen = history["chosen"].astype(bool).tolist() if "chosen" in history.columns else None
    rows = history[columns].astype(object).values.tolist()
    classes = ["chosen" if c else "" for c in chosen] if chosen else None
    return table(columns, rows, classes)


def _metrics_sections(comparison: Mapping, ks: Sequence[int]) -> list[str]:
    """Return each evaluation set's metrics table, the skipped scorers, the retrieval index."""
    sections = ["<h2>Model against the baselines</h2>"]
    for title, section in _evaluation_sets(comparison):
        users = section["model"].get("users")
        sections.append(f"<h3>{_esc(title)}" + (f" ({users:,} users)" if users else "") + "</h3>")
        sections.append(metrics_table(section, ks))
    skipped = [
        f"<li>{_esc(n)}: skipped ({_esc(v['skipped'])})</li>"
        for n, v in comparison.items()
        if isinstance(v, dict) and "skipped" in v
    ]
    if skipped:
        sections.append("<ul>" + "".join(skipped) + "</ul>")
    ann = comparison.get("ann") or {}
    if ann:
        sections.append("<h3>Retrieval index</h3>")
        sections.append(table(["", ""], _scalars(ann)))
    return sections


def _plots_section(figures: Mapping[str, Any]) -> list[str]:
    """Return the plots, each embedded as a PNG data URI under its caption."""
    return [
        "<h2>Plots</h2>",
        '<div class="plots">'
        + "".join(
            f'<figure><img alt="{_esc(caption)}" src="{figure_data_uri(fig)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
            for caption, fig in figures.items()
        )
        + "</div>",
    ]


def _run_section(run: Mapping[str, Any] | None) -> list[str]:
    """Return what identifies the run: its id, where its manifest will be, its parameters."""
    if not run:
        return []
    sections = ["<h2>Run</h2>"]
    rows = [[k, v] for k, v in run.items() if k not in ("parameters", "manifest")]
    sections.append(table(["", ""], rows))
    if run.get("manifest"):
        link = _esc(run["manifest"])
        sections.append(
            f'<p>Run manifest (written when the run ends): <a href="{link}">{link}</a></p>'
        )
    if run.get("parameters"):
        text = json.dumps(run["parameters"], indent=2, sort_keys=True, default=str)
        sections.append(
            "<details><summary>Parameters after overrides</summary>"
            f"<pre>{_esc(text)}</pre></details>"
        )
    return sections


def build_html_report(
    headline: str,
    outputs: RunOutputs,
    figures: Mapping[str, Any],
    ks: Sequence[int],
    run: Mapping[str, Any] | None = None,
) -> str:
    """Return the self-contained HTML report of a run.

    figures maps a caption to a matplotlib figure (embedded as PNG); run holds
    what identifies the run (its id, the parameters after overrides, where its
    manifest will be), shown last; outputs.model_selection (the training node's
    choice) adds which towers validation chose, when there was more than one candidate.
    """
    sections = [
        "<h1>Two-tower run report</h1>",
        f'<p class="headline">{_esc(headline)}</p>',
        "<h2>Health</h2>",
        _health_section(outputs.health),
        *_metrics_sections(outputs.comparison, ks),
        _selection_section(outputs.model_selection),
        *_plots_section(figures),
        "<h2>Training history</h2>",
    ]
    chosen = chosen_epoch(outputs.history)
    if chosen is not None:
        sentence = persisted_model_sentence(outputs.model_selection, chosen)
        sections.append(f"<p>{_esc(sentence)}</p>")
    sections.append(_history_table(outputs.history))
    sections += ["<h2>Data</h2>", table(["", ""], _scalars(outputs.ingestion_report))]
    sections += ["<h2>Split</h2>", table(["", ""], _scalars(outputs.split_report))]
    sections += _run_section(run)
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Two-tower run report</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )
