"""The HTML report: one self-contained page, and what a browser makes of it."""

from __future__ import annotations

import re
import subprocess
import tempfile

import matplotlib
import pandas as pd
import pytest
from matplotlib.figure import Figure

from twotower_pipeline.reporting.html import build_html_report
from twotower_pipeline.reporting.report_sections import RunOutputs

matplotlib.use("Agg")

HEALTH = {
    "verdict": "1 flag(s) raised: no_lift",
    "raised": ["no_lift"],
    "flags": [
        {
            "name": "no_lift",
            "raised": True,
            "message": "HR@10 0.05 vs popularity 0.06 <x1>",
            "advice": "Train longer.",
        },
        {"name": "nan_loss", "raised": False, "message": "all finite", "advice": "Lower lr."},
    ],
}
COMPARISON = {
    "model": {"users": 40, "hit_rate@10": 0.05, "ndcg@10": 0.02, "mrr": 0.03},
    "popularity": {"users": 40, "hit_rate@10": 0.06, "ndcg@10": 0.03, "mrr": 0.04},
    "als": {"skipped": "implicit is not installed"},
    "lift_over_popularity": {"hit_rate@10": 0.8333},
    "validation": {
        "model": {"users": 41, "hit_rate@10": 0.07},
        "popularity": {"users": 41, "hit_rate@10": 0.06},
    },
    "ann": {"recall@10": 0.999, "queries": 40},
}
HISTORY = pd.DataFrame(
    {"epoch": [1, 2], "train_loss": [0.6, 0.5], "val_loss": [0.62, 0.55], "chosen": [0, 1]}
)


def figure() -> Figure:
    fig = Figure(figsize=(2, 1.5))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def report(model_selection: dict | None = None, **overrides) -> str:
    outputs = RunOutputs(
        ingestion_report={"rows_read": 100, "rows_dropped": {"duplicates": 2}},
        split_report={"strategy": "leave_last_out"},
        history=HISTORY,
        comparison=COMPARISON,
        health=HEALTH,
        model_selection=model_selection,
    )
    arguments = dict(
        headline="test: model HR@10 0.05",
        outputs=outputs,
        figures={"Learning curve": figure(), "Model against the baselines": figure()},
        ks=[10],
        run={"run id": "2026-01-01T00.00.00.000Z", "parameters": {"neg_ratio": 5}},
    )
    return build_html_report(**(arguments | overrides))


def test_plots_are_embedded_and_nothing_is_fetched_from_elsewhere():
    page = report()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 2
    assert not re.search(r'src="(?!data:)', page)  # no external image, script or style
    assert "<script" not in page


def test_raised_flags_come_with_their_advice_and_text_is_escaped():
    page = report()
    assert "Train longer." in page
    assert "Lower lr." not in page  # advice only where a flag is raised
    assert "&lt;x1&gt;" in page and "<x1>" not in page


def test_tables_hold_every_scorer_the_skipped_ones_and_the_index_recall():
    page = report()
    assert "<th>popularity</th>" in page and "<th>lift over popularity</th>" in page
    assert "als: skipped (implicit is not installed)" in page
    assert "Validation (41 users)" in page
    assert "0.9990" in page
    assert '<tr class="chosen">' in page  # the epoch the model was kept from


def test_the_towers_validation_chose_are_listed_with_the_kept_one_marked():
    configured = {"name": "configured", "model": {}, "kept_epoch": 13, "chosen": False}
    ensemble = {"name": "ensemble", "model": {"members": "configured + user_id"}}
    ensemble |= {"kept_epoch": None, "chosen": True}
    configured["validation_recall@10"], ensemble["validation_recall@10"] = 0.1902, 0.2009
    selection = {"metric": "validation recall@10", "candidates": [configured, ensemble]}
    page = report(model_selection=selection)
    assert "<h2>Towers validation chose</h2>" in page
    assert (
        '<tr class="chosen"><td>ensemble</td><td>members: configured + user_id</td>'
        "<td>each member&#x27;s</td><td>0.2009</td>" in page
    )
    assert "<tr><td>configured</td><td>(conf as given)</td><td>13</td><td>0.1902</td>" in page
    persisted = "The persisted model is the ensemble: the candidates&#x27; kept epochs (configured"
    assert persisted in page
    one = {**selection, "candidates": [configured]}
    assert "Towers validation chose" not in report(model_selection=one)


@pytest.mark.browser
def test_the_smoke_run_report_renders_with_its_images_in_chromium(smoke_project, tmp_path):
    from test_viz_browser import CHROMIUM_FLAGS, find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (bash scripts/install_browser.sh)")
    [page] = list((smoke_project / "data").rglob("08_reporting/report.html"))
    # A copy that writes, once loaded, how many images the browser decoded.
    probe = tmp_path / "report.html"
    probe.write_text(
        page.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', () => {document.body.dataset.decoded ="
            " [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;"
            " document.body.dataset.images = document.images.length;});</script></body>",
        )
    )
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        screenshot = tmp_path / "report.png"
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--window-size=1200,2000",
                f"--screenshot={screenshot}",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    decoded = int(re.search(r'data-decoded="(\d+)"', dom).group(1))
    assert images == 3 and decoded == 3
    assert "Two-tower run report" in dom and "Health" in dom
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
