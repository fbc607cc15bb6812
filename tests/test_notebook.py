"""The exploration notebook runs top to bottom against a smoke-run project, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook extra is not installed")
nbclient = pytest.importorskip("nbclient", reason="the notebook extra is not installed")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_results.ipynb"


def test_explore_results_notebook_runs_top_to_bottom_on_the_catalog(smoke_project, monkeypatch):
    monkeypatch.setenv("KEDRO_PROJECT_PATH", str(smoke_project))
    monkeypatch.setenv("KEDRO_ENV", "smoke")
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    client = nbclient.NotebookClient(
        notebook,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(smoke_project)}},
    )
    client.execute()

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    texts = "\n".join(
        str(output.get("data", {}).get("text/plain", output.get("text", ""))) for output in outputs
    )
    assert f"project: {smoke_project}" in texts
    assert "lift over popularity" in texts
    assert "message" in texts and "raised" in texts  # the health checks table
    assert "recommended" in texts
    assert any("image/png" in output.get("data", {}) for output in outputs), "no curve plotted"
    assert "run id" in texts  # the run manifest


def _log_lines(cell) -> list[str]:
    """Return the text of each log line a cell printed, without colours or timestamps."""
    import re

    lines = []
    for output in cell.get("outputs", []):
        text = str(output.get("text", output.get("data", {}).get("text/plain", "")))
        for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
            message = re.sub(r"^\s*(\[[^\]]*\])?\s*", "", line).strip()
            if message:
                lines.append(message)
    return lines


def test_loading_the_project_logs_each_line_once_and_no_library_chatter(smoke_project, monkeypatch):
    monkeypatch.setenv("KEDRO_PROJECT_PATH", str(smoke_project))
    monkeypatch.setenv("KEDRO_ENV", "smoke")
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    load = next(
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and "%load_ext kedro.ipython" in cell.source
    )
    notebook.cells = notebook.cells[: load + 1]
    nbclient.NotebookClient(
        notebook,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(smoke_project)}},
    ).execute()
    lines = _log_lines(notebook.cells[load])
    assert any("Defined global variable" in line for line in lines)
    assert len(lines) == len(set(lines)), "lines repeated:\n" + "\n".join(lines)
    assert not [line for line in lines if "mlflow" in line.lower() or "WARNING" in line], lines


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
