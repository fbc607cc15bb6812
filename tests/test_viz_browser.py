"""kedro-viz as a user sees it: the static site, served over HTTP, rendered by headless Chromium.

The site is built with `kedro viz build --include-previews` from the smoke-run
project, served on 127.0.0.1 and loaded in a real browser; the tests read the
DOM the browser rendered, so they fail when the graph, the layers or a preview
does not show, not merely when a file is missing. Chromium comes from
`scripts/install_browser.sh` (Debian package `chromium`); where no Chromium
can be found the tests skip and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that let Chromium run headless as root in a container, with no network chatter.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=20000",
)
# Kedro's data layers, in the order the catalog's metadata draws them.
LAYERS = [
    "raw",
    "intermediate",
    "primary",
    "feature",
    "model_input",
    "models",
    "model_output",
    "reporting",
]
# The preview kedro-viz should show, by dataset class (plotly's JSONDataset is a plot).
PREVIEW_BY_CLASS = {
    "ParquetDataset": "TablePreview",
    "CSVDataset": "TablePreview",
    "SyntheticInteractionsDataset": "TablePreview",
    "JSONDataset": "JSONPreview",
    "MatplotlibDataset": "ImagePreview",
}


def expected_preview(dataset_type: str) -> str | None:
    """Return the preview kind a dataset of this type (as kedro-viz names it) should have."""
    if dataset_type.startswith("plotly."):
        return "PlotlyPreview"
    class_name = dataset_type.rsplit(".", 1)[-1]
    # Matched by suffix: the project's AtomicParquetDataset previews as a ParquetDataset.
    return next(
        (kind for suffix, kind in PREVIEW_BY_CLASS.items() if class_name.endswith(suffix)), None
    )


def find_chromium() -> str | None:
    """Return the path of a Chromium (or Chrome) executable, or None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium found (looked for $CHROMIUM and "
            + ", ".join(CHROMIUM_NAMES)
            + "): install it with `bash scripts/install_browser.sh`"
        )
    return path


@pytest.fixture(scope="module")
def viz_site(smoke_project: Path) -> Path:
    """Return the folder `kedro viz build --include-previews` wrote for the smoke-run project."""
    env = {**os.environ, "KEDRO_ENV": "smoke", "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "viz", "build", "--include-previews"],
        cwd=smoke_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    site = smoke_project / "build"
    output = result.stdout[-4000:] + result.stderr[-4000:]
    hint = ""
    if "Unable to serialize" in output:
        hint = (
            "\nA dataset's preview is not JSON-serialisable (numpy arrays, e.g. a list column): "
            "set `preview: false` under its `metadata.kedro-viz`, or make preview() return "
            "plain Python values."
        )
    assert result.returncode == 0 and (site / "index.html").exists(), (
        f"kedro viz build --include-previews failed:{hint}\n{output}"
    )
    return site


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def site_url(viz_site: Path) -> Iterator[str]:
    """Serve the static site on 127.0.0.1 for the module's tests; return its URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=viz_site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "api/main", timeout=2) as response:
                    assert response.status == 200
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


class RenderedViz(HTMLParser):
    """What a person sees in the rendered kedro-viz page: graph nodes, layers, previews."""

    def __init__(self) -> None:
        super().__init__()
        self.graph_nodes: dict[str, str] = {}  # name -> task | data | parameters
        self.layers: list[str] = []
        self.preview_headers: list[str] = []
        self.preview_images = 0
        self.plotly_charts = 0
        self._text_target: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "g" and "pipeline-node" in classes and attributes.get("data-node-fullname"):
            self.graph_nodes[attributes["data-node-fullname"]] = attributes.get(
                "data-node-type", ""
            )
        elif tag == "li" and "pipeline-layer-name" in classes:
            self._text_target = self.layers
        elif tag == "th" and "preview-table__header" in classes:
            self._text_target = self.preview_headers
        elif tag == "img" and (attributes.get("src") or "").startswith("data:image/"):
            self.preview_images += 1
        elif "js-plotly-plot" in classes:
            self.plotly_charts += 1

    def handle_data(self, data: str) -> None:
        if self._text_target is not None and data.strip():
            self._text_target.append(data.strip())
            self._text_target = None


def render(chromium: str, url: str) -> RenderedViz:
    """Return what headless Chromium rendered at `url` (its DOM after the scripts ran)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 0, f"chromium failed on {url}:\n{result.stderr[-3000:]}"
    page = RenderedViz()
    page.feed(result.stdout)
    return page


def site_nodes(viz_site: Path) -> dict[str, dict]:
    """Return the site's graph nodes by name (from the JSON the page itself loads)."""
    main = json.loads((viz_site / "api" / "main").read_text())
    return {node["name"]: node for node in main["nodes"]}


@pytest.fixture(scope="module")
def rendered_graph(chromium, site_url) -> RenderedViz:
    return render(chromium, site_url)


@pytest.fixture(scope="module")
def expanded_graph(chromium, site_url) -> RenderedViz:
    """The graph with every stage expanded (kedro-viz's expandAllPipelines)."""
    return render(chromium, f"{site_url}?pid=__default__&expandAllPipelines=true")


def test_the_expanded_graph_shows_every_node_and_dataset_of_the_default_pipeline(expanded_graph):
    from twotower_pipeline.pipeline_registry import register_pipelines

    pipeline = register_pipelines()["__default__"]
    page = expanded_graph

    tasks = {name for name, kind in page.graph_nodes.items() if kind == "task"}
    # kedro-viz labels a node by its name within its stage (namespace).
    assert {node.name.removeprefix(f"{node.namespace}.") for node in pipeline.nodes} <= tasks
    assert {"train_two_tower", "sample_negatives", "validate_interactions"} <= tasks
    datasets = {name for name, kind in page.graph_nodes.items() if kind == "data"}
    expected = {d for d in pipeline.datasets() if d != "parameters" and not d.startswith("params:")}
    assert expected <= datasets, f"datasets missing from the graph: {sorted(expected - datasets)}"
    assert {"raw_interactions", "evaluation_metrics"} <= datasets


def test_the_rendered_graph_draws_the_data_layers_from_raw_to_reporting(expanded_graph):
    # kedro-viz orders the bands by the stage graph, where some pairs are unordered or
    # reversed (features are fitted on the training split: model_input before feature).
    layers = expanded_graph.layers
    assert sorted(layers) == sorted(LAYERS)
    assert layers[0] == "raw" and layers[-1] == "reporting"


def test_every_dataset_has_a_layer_and_a_preview_of_its_kind(viz_site, smoke_project):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(smoke_project)
    with KedroSession.create(project_path=smoke_project, env="smoke") as session:
        catalog_conf = session.load_context().config_loader["catalog"]

    problems = []
    for name, node in site_nodes(viz_site).items():
        if node["type"] != "data":
            continue
        if node.get("layer") not in LAYERS:
            problems.append(f"{name}: no layer (metadata.kedro-viz.layer in the catalog)")
        viz_conf = (catalog_conf.get(name, {}).get("metadata") or {}).get("kedro-viz") or {}
        kind = expected_preview(node["dataset_type"])
        if kind is None or viz_conf.get("preview") is False:
            continue
        details = json.loads((viz_site / "api" / "nodes" / node["id"]).read_text())
        if details.get("preview_type") != kind or not details.get("preview"):
            problems.append(f"{name}: preview_type {details.get('preview_type')!r}, want {kind}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dataset", ["raw_interactions", "training_history", "recommendations"])
def test_a_selected_table_dataset_shows_its_preview_in_the_browser(
    chromium, site_url, viz_site, dataset
):
    node = site_nodes(viz_site)[dataset]
    details = json.loads((viz_site / "api" / "nodes" / node["id"]).read_text())
    assert details.get("preview_type") == "TablePreview", (
        f"{dataset}: {details.get('preview_type')}"
    )
    page = render(chromium, f"{site_url}?pid=__default__&sid={node['id']}&sn={dataset}")
    assert (
        page.preview_headers[: len(details["preview"]["columns"])] == details["preview"]["columns"]
    )


@pytest.mark.parametrize("kind", ["ImagePreview", "PlotlyPreview"])
def test_a_selected_plot_shows_its_image_or_chart_in_the_browser(
    chromium, site_url, viz_site, kind
):
    plots = [
        (name, node)
        for name, node in site_nodes(viz_site).items()
        if node["type"] == "data" and expected_preview(node.get("dataset_type") or "") == kind
    ]
    if not plots:
        pytest.skip(f"the pipeline has no dataset previewed as {kind}")
    name, node = plots[0]
    page = render(chromium, f"{site_url}?pid=__default__&sid={node['id']}&sn={name}")
    if kind == "ImagePreview":
        assert page.preview_images >= 1, f"{name}: no image in the side panel"
    else:
        assert page.plotly_charts >= 1, f"{name}: no plotly chart in the side panel"


# --- The stages as modular pipelines (namespaces): collapsed, and one expanded ---------


def stage_names() -> set[str]:
    """Return the namespaces of the default pipeline's nodes: one per stage."""
    from twotower_pipeline.pipeline_registry import register_pipelines

    return {node.namespace for node in register_pipelines()["__default__"].nodes}


def test_the_overview_shows_each_stage_as_one_collapsed_node(rendered_graph, viz_site):
    page = rendered_graph
    stages = {name for name, kind in page.graph_nodes.items() if kind == "modularPipeline"}
    assert stages == stage_names()
    assert {"ingestion", "split", "negative_sampling", "training", "evaluation"} <= stages
    # Collapsed: no node of a stage is drawn, and the stages' internal datasets are
    # inside them, so the overview holds far fewer boxes than the expanded graph.
    assert [name for name, kind in page.graph_nodes.items() if kind == "task"] == []
    everything = [n for n in site_nodes(viz_site).values() if n["type"] in ("task", "data")]
    assert len(page.graph_nodes) < len(everything) * 0.7
    assert {
        "raw_interactions",
        "interactions",
        "train_examples",
        "recommendations",
        "run_report",
    } <= set(page.graph_nodes)


def test_an_expanded_stage_shows_its_nodes_and_datasets(chromium, site_url):
    from twotower_pipeline.pipeline_registry import register_pipelines

    evaluation = register_pipelines()["evaluation"]
    page = render(chromium, f"{site_url}?pid=__default__&fid=evaluation&expandAllPipelines=true")
    tasks = {name for name, kind in page.graph_nodes.items() if kind == "task"}
    expected = {node.name.removeprefix("evaluation.") for node in evaluation.nodes}
    assert expected <= tasks, f"missing: {sorted(expected - tasks)}"
    assert {"model_metrics", "baseline_metrics", "evaluation_metrics"} <= set(page.graph_nodes)
