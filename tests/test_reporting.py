"""Plots and report.md built from a small hand-made run."""

from __future__ import annotations

import io
import re

import pandas as pd
import pytest

from twotower_pipeline.evaluation.comparison import compare_with_baselines
from twotower_pipeline.reporting.markdown import (
    build_report,
    headline,
    learning_curve,
    model_vs_baselines,
    ranking_curve,
)
from twotower_pipeline.reporting.report_sections import RunOutputs, code_span

HISTORY = pd.DataFrame(
    {
        "epoch": [1, 2, 3],
        "train_loss": [0.64, 0.45, 0.38],
        "val_loss": [0.65, 0.47, 0.41],
        "val_auc": [0.6, 0.75, 0.8],
        "recall@10": [0.05, 0.09, 0.11],
        "ndcg@10": [0.02, 0.04, 0.05],
        "logit_scale": [1.2, 1.8, 2.5],
        "chosen": [False, True, False],
    }
)
MODEL = {
    "users": 100,
    "mrr": 0.06,
    "hit_rate@10": 0.12,
    "hit_rate_se@10": 0.0325,
    "recall@10": 0.12,
    "ndcg@10": 0.06,
    "coverage@10": 0.5,
    "test_log_loss": 0.41,
    "test_auc": 0.8,
    "test_sample_positives": 100,
    "test_sample_negatives": 500,
}
VAL_MODEL = {
    **{k: v for k, v in MODEL.items() if not k.startswith("test_")},
    "hit_rate@10": 0.15,
    "val_log_loss": 0.39,
    "val_auc": 0.82,
    "val_sample_positives": 100,
    "val_sample_negatives": 500,
}
COLD = {"users": 20, "mrr": 0.2, "hit_rate@10": 0.5, "ndcg@10": 0.25}
POPULARITY = {
    "users": 100,
    "mrr": 0.03,
    "hit_rate@10": 0.06,
    "recall@10": 0.06,
    "ndcg@10": 0.03,
    "coverage@10": 0.01,
}
RANDOM = {
    "users": 100,
    "mrr": 0.01,
    "hit_rate@10": 0.01,
    "recall@10": 0.01,
    "ndcg@10": 0.004,
    "coverage@10": 1.0,
}
SKIPPED_ALS = {"skipped": "the optional library implicit is not installed"}
COMPARISON = compare_with_baselines(
    {
        "test": MODEL,
        "validation": VAL_MODEL,
        "cold_items": COLD,
        "cold_items_full": {**COLD, "hit_rate@10": 0.0, "ndcg@10": 0.0},
    },
    {
        "test": {"popularity": POPULARITY, "random": RANDOM, "als": SKIPPED_ALS},
        "validation": {"popularity": POPULARITY, "random": RANDOM, "als": SKIPPED_ALS},
        "cold_items": {"popularity": {**COLD, "hit_rate@10": 0.2}, "random": RANDOM},
        "cold_items_full": {"popularity": COLD, "random": RANDOM},
    },
    {"skipped": "faiss is not installed"},
)
HEALTH = {
    "verdict": "1 flag(s) raised: overfitting",
    "raised": ["overfitting"],
    "flags": [
        {"name": "non_finite", "raised": False, "message": "all finite", "advice": "a"},
        {
            "name": "overfitting",
            "raised": True,
            "message": "val loss rose from epoch 2",
            "advice": "use the model of the best epoch",
        },
    ],
}
INGESTION = {
    "source": "data/01_raw/x.parquet",
    "rows_read": 1000,
    "interactions": 990,
    "users": 100,
    "items": 50,
    "density": 0.198,
    "rows_dropped": {"duplicates": 10},
}
SPLIT = {
    "strategy": "leave_last_out",
    "train_interactions": 890,
    "val_interactions": 100,
    "val_users": 100,
    "test_interactions": 100,
    "test_users": 100,
    "test_cold_interactions": 20,
    "users_without_validation": 0,
}


def test_lift_is_model_over_popularity_for_ranking_metrics_only():
    lift = COMPARISON["lift_over_popularity"]
    assert lift["hit_rate@10"] == pytest.approx(2.0)
    assert lift["mrr"] == pytest.approx(2.0)
    assert "coverage@10" not in lift and "hit_rate_se@10" not in lift
    assert "test_log_loss" not in lift


def test_evaluation_metrics_hold_test_at_the_top_and_the_other_sets_under_their_keys():
    assert COMPARISON["model"] == MODEL and COMPARISON["popularity"] == POPULARITY
    assert COMPARISON["validation"]["model"] == VAL_MODEL
    assert COMPARISON["validation"]["lift_over_popularity"]["hit_rate@10"] == pytest.approx(2.5)
    # Among the cold items the reference is random: popularity has no signal there.
    assert COMPARISON["cold_items"]["lift_over_random"]["hit_rate@10"] == pytest.approx(50.0)
    assert set(COMPARISON["cold_items_full"]) == {
        "model",
        "popularity",
        "random",
        "lift_over_random",
    }


def test_a_skipped_cold_set_carries_no_lift():
    skipped = {"skipped": "no test row has an item without training interactions"}
    comparison = compare_with_baselines(
        {"test": MODEL, "validation": VAL_MODEL, "cold_items": skipped, "cold_items_full": skipped},
        {
            "test": {"popularity": POPULARITY, "random": RANDOM},
            "validation": {"popularity": POPULARITY, "random": RANDOM},
            "cold_items": {"popularity": skipped, "random": skipped},
            "cold_items_full": {"popularity": skipped, "random": skipped},
        },
        {},
    )
    assert comparison["cold_items"] == {"model": skipped, "popularity": skipped, "random": skipped}
    assert "No cold-start figures: no test row has an item" in build_report(
        RunOutputs(INGESTION, SPLIT, HISTORY, comparison, HEALTH), 5, [10], 10
    )


def test_headline_is_on_test_with_the_standard_error_popularity_and_the_verdict():
    line = headline(COMPARISON, HEALTH, 10)
    assert line.startswith("test (100 users): model HR@10 0.1200 ±0.0325 NDCG@10 0.0600")
    assert "popularity HR@10 0.0600 NDCG@10 0.0300" in line
    assert "als" not in line  # skipped
    assert "lift x2.00" in line
    assert line.endswith("health: 1 flag(s) raised: overfitting")


def test_report_has_data_split_curve_metrics_and_health_with_advice():
    report = build_report(RunOutputs(INGESTION, SPLIT, HISTORY, COMPARISON, HEALTH), 5, [10], 10)
    for section in (
        "## Data",
        "## Split",
        "## Training curve",
        "## Model vs baselines (test)",
        "## Validation (what chose the epoch)",
        "## Cold items (test)",
        "## Health",
    ):
        assert section in report
    assert "| hit_rate@10 | 0.1200 | 0.0600 | 0.0100 | 2.0000 |" in report
    assert "| hit_rate@10 | 0.1500 | 0.0600 | 0.0100 | 2.5000 |" in report
    assert "| hit_rate_se@10 | 0.0325 |" in report
    assert "| hit_rate@10 | 0.5000 | 0.2000 | 0.0100 | 50.0000 |" in report
    assert "als: skipped (the optional library implicit is not installed)" in report
    assert "what to do: use the model of the best epoch" in report
    assert "on 100 test positives + 500 sampled negatives: log loss 0.4100, AUC 0.8000" in report
    assert "log loss 0.3900, AUC 0.8200" in report
    assert "| test positives | 100 |" in report
    assert "The persisted model is epoch 2's" in report
    assert "| 2 | 0.4500 | 0.4700 |" in report and "| 0.0400 | 1.8000 | ✓ |" in report


@pytest.mark.parametrize(
    "make",
    [
        lambda: learning_curve(HISTORY, 5, initial_scale=1.0),
        lambda: ranking_curve(HISTORY, COMPARISON["validation"], 10),
        lambda: model_vs_baselines(COMPARISON, [10]),
    ],
    ids=["learning_curve", "ranking_curve", "model_vs_baselines"],
)
def test_each_plot_renders_as_png_and_plotly_json(make):
    figure, plot = make()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    assert plot.to_json().startswith("{")
    assert len(plot.data) >= 2


def test_skipped_baselines_are_not_plotted():
    _, plot = model_vs_baselines(COMPARISON, [10])
    assert {trace.name for trace in plot.data} == {"model", "popularity", "random"}


@pytest.mark.integration
def test_smoke_run_writes_health_plots_report_and_recommendations(smoke_project):
    import json

    reporting = smoke_project / "data/smoke" / "08_reporting"
    health = json.loads((reporting / "training_health.json").read_text())
    assert health["verdict"] and {f["name"] for f in health["flags"]} >= {
        "loss_collapse",
        "one_class_validation",
        "scale_at_clamp",
        "embedding_collapse",
        "no_lift",
        "overfitting",
        "non_finite",
    }
    report = (reporting / "report.md").read_text()
    assert report.startswith("# Two-tower run report")
    for plot in ("learning_curve", "ranking_curve", "model_vs_baselines"):
        for suffix in ("png", "json"):
            versions = list((reporting / f"{plot}.{suffix}").iterdir())
            assert versions and (versions[0] / f"{plot}.{suffix}").exists()
    recs = pd.read_parquet(smoke_project / "data/smoke/07_model_output/recommendations.parquet")
    # Every interaction of the log is masked, held-out ones included: served, they are known.
    train = pd.read_parquet(smoke_project / "data/smoke" / "03_primary" / "interactions.parquet")
    users = pd.read_parquet(smoke_project / "data/smoke" / "03_primary" / "user_index.parquet")
    items = pd.read_parquet(smoke_project / "data/smoke" / "03_primary" / "item_index.parquet")
    seen = set(
        zip(
            users["user_id"].to_numpy()[train["user"]],
            items["item_id"].to_numpy()[train["item"]],
            strict=True,
        )
    )
    assert not seen & set(zip(recs["user_id"], recs["item_id"], strict=True))


def test_learning_curve_starts_the_scale_at_its_initial_value():
    _, plot = learning_curve(HISTORY, 5, initial_scale=10.0)
    scale = next(trace for trace in plot.data if trace.name == "logit scale")
    assert list(scale.x) == [0, 1, 2, 3] and list(scale.y) == [10.0, 1.2, 1.8, 2.5]


def test_the_report_says_which_towers_validation_chose():
    configured = {"name": "configured", "model": {}, "kept_epoch": 13, "chosen": False}
    user_id = {"name": "user_id", "model": {"user_id": True}, "kept_epoch": 19, "chosen": True}
    configured["validation_recall@10"], user_id["validation_recall@10"] = 0.1902, 0.1945
    selection = {"metric": "validation recall@10", "candidates": [configured, user_id]}
    report = build_report(
        RunOutputs(INGESTION, SPLIT, HISTORY, COMPARISON, HEALTH, selection), 5, [10], 10
    )
    assert "| user_id | user_id: True | 19 | 0.1945 | ✓ |" in report
    assert "| configured | (conf as given) | 13 | 0.1902 |  |" in report
    # The ensemble of both: its members keep their own epochs.
    user_id["chosen"] = False
    ensemble = {"name": "ensemble", "model": {"members": "configured + user_id"}}
    ensemble |= {"kept_epoch": None, "validation_recall@10": 0.2009, "chosen": True}
    both = {**selection, "candidates": [configured, user_id, ensemble]}
    report = build_report(
        RunOutputs(INGESTION, SPLIT, HISTORY, COMPARISON, HEALTH, both), 5, [10], 10
    )
    assert "| ensemble | members: configured + user_id | each member's | 0.2009 | ✓ |" in report
    assert "its curve is that of its best member" in report
    # What was persisted is the ensemble, not the curve's epoch alone (HISTORY marks epoch 2).
    assert (
        "The persisted model is the ensemble: the candidates' kept epochs (configured epoch 13, "
        "user_id epoch 19) scored together. The curve is its best member's (epoch 2 marked ✓)"
    ) in report
    assert "The persisted model is epoch 2's" not in report
    # One candidate (model_selection off): nothing to say.
    one = {**selection, "candidates": [configured]}
    assert "Validation chose the towers" not in build_report(
        RunOutputs(INGESTION, SPLIT, HISTORY, COMPARISON, HEALTH, one), 5, [10], 10
    )


# --- user strings in report.md: a code span they cannot break out of ---------------------


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("data/01_raw/x.csv", "`data/01_raw/x.csv`"),
        ("data/01_raw/a`b.csv", "``data/01_raw/a`b.csv``"),
        ("a``b", "```a``b```"),
        ("`x`", "`` `x` ``"),
        (" both ", "`  both  `"),
        ("two\nlines", "`two lines`"),
        ("", "` `"),
    ],
)
def test_a_code_span_is_fenced_longer_than_any_backtick_run_and_padded(text, span):
    assert code_span(text) == span


def test_a_code_span_in_a_table_escapes_its_pipes():
    assert code_span("a|b", in_table=True) == "`a\\|b`"
    assert code_span("a|b") == "`a|b`"
    assert code_span("a\\|b", in_table=True) == "`a\\\\\\|b`"  # no backslash unescapes it


@pytest.mark.parametrize(
    "source",
    [
        "data/01_raw/we`ird.csv",
        "data/01_raw/`<img src=x onerror=alert(1)>`.csv",
        "data/01_raw/a | b.csv",
        "data/01_raw/new\nline **bold**.csv",
        "data/01_raw/ends with`",
    ],
)
def test_a_source_path_with_markdown_in_it_renders_as_that_path_in_one_cell(source):
    markdown_it = pytest.importorskip("markdown_it")
    report = build_report(
        RunOutputs({**INGESTION, "source": source}, SPLIT, HISTORY, COMPARISON, HEALTH),
        5,
        [10],
        10,
    )
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(report)
    data_table = html.split("<h2>Data</h2>", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<td>(.*?)</td>", data_table, flags=re.S)
    shown = source.replace("\n", " ").replace("&", "&amp;").replace("<", "&lt;")
    shown = shown.replace(">", "&gt;").replace('"', "&quot;")
    assert cells[:4] == ["source", f"<code>{shown}</code>", "rows read", "1,000"]
    assert "<img" not in html and "<strong>" not in data_table
