"""A failed run publishes nothing: every output, versioned or not, stays the last good run's.

One project copy is smoke-run once; then runs that fail in different ways
(bad settings, divergence, Ctrl-C, a crash in the last node, an unreadable
raw file) are made in it. After each, every file under data/ must be byte
for byte what the good run left (the model, the metrics and the plots are
versioned: no new version folder may remain), and the error must be one
message with its exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kedro.framework.hooks import hook_impl

import twotower_pipeline.settings as project_settings
from twotower_pipeline.hooks.readable_errors import ReadableError

CHECKPOINTS = "smoke/06_models/checkpoints_smoke"


def snapshot(project: Path, skip: str | None = None) -> dict[str, bytes]:
    """Return every file under the project's data/ folder (relative path -> bytes)."""
    data = project / "data"
    return {
        str(path.relative_to(data)): path.read_bytes()
        for path in sorted(data.rglob("*"))
        if path.is_file() and not (skip and str(path.relative_to(data)).startswith(skip))
    }


@pytest.fixture(scope="module")
def good_run(make_project_copy, kedro_run) -> Path:
    """A project copy after one successful smoke run (each test compares with its own start)."""
    project = make_project_copy("failed_run")
    kedro_run(project)
    before = snapshot(project)
    assert any(name.startswith("smoke/06_models/two_tower_model.pt/") for name in before)
    assert any(name.startswith("smoke/08_reporting/evaluation_metrics.json/") for name in before)
    return project


def assert_nothing_published(project: Path, before: dict[str, bytes], skip: str | None = None):
    after = snapshot(project, skip)
    expected = {k: v for k, v in before.items() if not (skip and k.startswith(skip))}
    assert sorted(after) == sorted(expected), "files added or removed"
    changed = [name for name in expected if after[name] != expected[name]]
    assert changed == [], f"changed: {changed}"


class _FailBefore:
    """A hook that makes the run fail as a node starts (after earlier nodes saved)."""

    def __init__(self, node_name: str, action) -> None:
        self.node_name, self.action = node_name, action

    @hook_impl
    def before_node_run(self, node) -> None:
        if node.name.rsplit(".", 1)[-1] == self.node_name:  # without its stage's namespace
            self.action()


@pytest.fixture
def extra_hook(monkeypatch):
    """Return a function that adds a hook to the project's settings for the next run."""

    def add(hook) -> None:
        monkeypatch.setattr(project_settings, "HOOKS", (*project_settings.HOOKS, hook))

    return add


def test_bad_settings_publish_nothing(good_run, kedro_run):
    project, before = good_run, snapshot(good_run)
    with pytest.raises(ReadableError) as failed:
        kedro_run(project, pipeline="train", params={"evaluation": {"headline_k": 7}})
    assert failed.value.format_message() == (
        "bad settings (1): evaluation: headline_k=7 must be one of ks=[10, 50] "
        "(conf/*/parameters*.yml or --params)"
    )
    assert failed.value.exit_code == 2
    assert_nothing_published(project, before)  # the checkpoint included: nothing ran


def test_a_neg_ratio_the_catalogue_cannot_supply_publishes_nothing(good_run, kedro_run):
    project, before = good_run, snapshot(good_run)
    with pytest.raises(ReadableError) as failed:
        kedro_run(project, pipeline="train", params={"neg_ratio": 500})
    assert failed.value.format_message().startswith(
        "bad settings (1): neg_ratio=500 must be below the number of items ("
    )
    assert failed.value.exit_code == 2
    assert_nothing_published(project, before)
    assert_nothing_published(project, before)


def test_a_diverged_run_publishes_nothing_and_keeps_the_checkpoint(good_run, kedro_run):
    project, before = good_run, snapshot(good_run)
    with pytest.raises(ReadableError) as failed:
        kedro_run(project, pipeline="train", params={"training": {"learning_rate": 1e30}})
    message = failed.value.format_message()
    assert message.startswith("training diverged in epoch 1")
    assert "bad input" not in message
    assert failed.value.exit_code == 1
    assert_nothing_published(project, before)  # the checkpoint included


def test_ctrl_c_after_the_model_was_saved_publishes_nothing(good_run, kedro_run, extra_hook):
    project, before = good_run, snapshot(good_run)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    extra_hook(_FailBefore("write_report", lambda: os.kill(os.getpid(), signal.SIGINT)))
    with pytest.raises(ReadableError) as failed:
        kedro_run(project, pipeline="train")
    assert failed.value.format_message().startswith("run interrupted by SIGINT")
    assert failed.value.exit_code == 130
    # The training finished, so its checkpoint is a newer complete one: allowed to differ.
    assert_nothing_published(project, before, skip=CHECKPOINTS)
    state = torch.load(project / "data" / CHECKPOINTS / "last.pt", weights_only=True)
    assert len(state["history"]) == 8
    assert signal.getsignal(signal.SIGINT) is handler_before  # the run put its handler back


def test_a_crash_in_the_last_node_publishes_nothing(good_run, kedro_run, extra_hook):
    project, before = good_run, snapshot(good_run)

    def crash() -> None:
        raise RuntimeError("disk full")

    extra_hook(_FailBefore("write_report", crash))
    with pytest.raises(RuntimeError, match="disk full"):
        kedro_run(project, pipeline="train")
    assert_nothing_published(project, before, skip=CHECKPOINTS)
    assert [p.name for p in (project / "data").rglob(".*.keep")] == []


def test_ctrl_c_on_the_command_line_is_one_line_exit_130_and_publishes_nothing(good_run):
    """A real `kedro run`, interrupted with SIGINT while it trains."""
    project, before = good_run, snapshot(good_run)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    kedro = Path(sys.executable).with_name("kedro")
    process = subprocess.Popen(
        [str(kedro), "run", "--env=smoke", "--pipeline=train"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if "epoch  2/" in line:  # training is under way: the checkpoint of epoch 1 is written
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("Error: run interrupted by SIGINT")
    assert "Traceback" not in stderr
    assert_nothing_published(project, before, skip=CHECKPOINTS)


def test_resume_without_a_checkpoint_is_an_error_and_publishes_nothing(good_run, kedro_run):
    project, before = good_run, snapshot(good_run)
    with pytest.raises(ReadableError) as failed:
        kedro_run(
            project,
            pipeline="train",
            params={"training": {"resume": True, "checkpoint_dir": "data/smoke/06_models/none"}},
        )
    message = failed.value.format_message()
    assert message.startswith("training.resume is true but there is no checkpoint at ")
    assert "data/smoke/06_models/none/last.pt" in message
    assert_nothing_published(project, before)


def test_a_run_killed_outright_is_rolled_back_before_the_next_one_reads(good_run):
    """SIGKILL runs no hook: the run's journal lets the next session put everything back."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project, before = good_run, snapshot(good_run)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    kedro = Path(sys.executable).with_name("kedro")
    process = subprocess.Popen(
        [str(kedro), "run", "--env=smoke", "--pipeline=train"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if "evaluate_model (" in line:  # the model and the history are saved by now
            process.kill()
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed = snapshot(project, skip=CHECKPOINTS)
    assert any(name.endswith(".journal.json") for name in killed)
    assert killed != {k: v for k, v in before.items() if not k.startswith(CHECKPOINTS)}

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="smoke") as session:
        session.load_context()
    assert_nothing_published(project, before, skip=CHECKPOINTS)


def test_a_checkpoint_folder_that_is_a_file_stops_before_anything_runs(good_run, kedro_run):
    project, before = good_run, snapshot(good_run)
    model_file = next((project / "data/smoke/06_models/two_tower_model.pt").rglob("*.pt"))
    folder = model_file.relative_to(project).as_posix()
    with pytest.raises(ReadableError) as failed:
        kedro_run(project, pipeline="train", params={"training": {"checkpoint_dir": folder}})
    assert failed.value.format_message() == (
        f"bad settings (1): training.checkpoint_dir={folder!r} must name a folder, but {folder} "
        "is a file; point it at a folder (or move the file)"
    )
    assert failed.value.exit_code == 2
    assert_nothing_published(project, before)


@pytest.mark.parametrize("defect", ["truncated", "zero_bytes", "foreign_dict"])
def test_a_defective_checkpoint_is_one_line_and_publishes_nothing(good_run, kedro_run, defect):
    project = good_run
    folder = project / "data/smoke/06_models/defective"
    folder.mkdir(exist_ok=True)
    whole = (project / "data" / CHECKPOINTS / "last.pt").read_bytes()
    path = folder / "last.pt"
    if defect == "truncated":
        path.write_bytes(whole[: len(whole) // 3])
    elif defect == "zero_bytes":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    before = snapshot(project)
    with pytest.raises(ReadableError) as failed:
        kedro_run(
            project,
            pipeline="train",
            params={
                "training": {"resume": True, "checkpoint_dir": str(folder.relative_to(project))}
            },
        )
    message = failed.value.format_message()
    assert "\n" not in message and failed.value.exit_code == 1
    assert "data/smoke/06_models/defective/last.pt" in message
    assert message.endswith("delete it, or set training.resume=false to start from epoch 1")
    assert_nothing_published(project, before)


def test_resume_after_a_split_change_is_refused_naming_it_and_publishes_nothing(
    good_run, kedro_run
):
    project, before = good_run, snapshot(good_run)
    with pytest.raises(ReadableError) as failed:
        kedro_run(
            project,
            params={"training": {"resume": True}, "split": {"strategy": "global_temporal"}},
        )
    message = failed.value.format_message()
    assert message.startswith(f"training.resume is true but data/{CHECKPOINTS}/")
    assert "split.strategy 'leave_last_out' -> now 'global_temporal'" in message
    assert "the train split's rows (" in message and failed.value.exit_code == 1
    assert_nothing_published(project, before)
