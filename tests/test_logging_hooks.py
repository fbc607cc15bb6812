"""Run logging: one line per node with what it produced, warnings for health flags."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import yaml

from twotower_pipeline.hooks.node_logging import (
    KedroNodeLinesFilter,
    NodeSummaryHooks,
    describe,
    raised_flags,
)

ROOT = Path(__file__).resolve().parents[1]


def test_a_table_is_described_by_rows_users_and_items():
    table = pd.DataFrame({"user": [0, 0, 1], "item": [5, 6, 5], "label": [1, 0, 1]})
    assert describe(table) == "3 rows, 2 users, 2 items"
    assert describe(pd.DataFrame({"user_id": ["a", "b"]})) == "2 rows, 2 users"
    assert describe({"recall@10": 0.1, "users": 3}) == "2 keys"
    assert describe("# Report\n\nAll good.") == "text, 3 lines"


def test_raised_health_flags_are_read_from_the_health_report_and_nothing_else():
    assert raised_flags(
        {
            "flags": [
                {"name": "no_lift", "raised": True, "message": "HR@10 below popularity"},
                {"name": "nan_loss", "raised": False, "message": "all finite"},
            ]
        }
    ) == ["no_lift: HR@10 below popularity"]
    assert raised_flags({"recall@10": 0.2}) == []
    assert raised_flags(pd.DataFrame()) == []


def test_each_node_logs_one_line_with_its_outputs_and_a_warning_per_flag(caplog):
    hooks = NodeSummaryHooks()
    node = SimpleNamespace(name="sample_negatives")
    hooks.before_pipeline_run(pipeline=SimpleNamespace(nodes=[node]))
    hooks.before_node_run(node=node)
    examples = pd.DataFrame({"user": [0, 1], "item": [3, 4], "label": [1, 0]})
    with caplog.at_level(logging.INFO, logger="twotower_pipeline"):
        hooks.after_node_run(
            node=node,
            outputs={
                "train_examples": examples,
                "health": {
                    "flags": [{"name": "loss_collapse", "raised": True, "message": "0.001"}]
                },
            },
        )
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0][0] == "INFO"
    assert lines[0][1].startswith("[1/1] sample_negatives (")
    assert "train_examples (2 rows, 2 users, 2 items)" in lines[0][1]
    assert lines[1] == ("WARNING", "health flag in health: loss_collapse: 0.001")


def test_kedro_node_lines_are_dropped_and_everything_else_kept():
    keep = KedroNodeLinesFilter().filter

    def record(msg, *args):
        return logging.LogRecord("kedro", logging.INFO, __file__, 1, msg, args, None)

    assert not keep(record("Completed %d out of %d tasks", 1, 9))
    assert not keep(record("Running node: %s", "x"))
    assert keep(record("Pipeline execution completed successfully in 1.5 sec."))


def test_logging_config_is_accepted_by_kedro():
    from kedro.framework.project import LOGGING

    config = yaml.safe_load((ROOT / "conf" / "logging.yml").read_text())
    # Kedro refuses factories and handler classes outside `logging` / `kedro.logging`.
    LOGGING._validate_logging_config(config)
    assert config["loggers"]["kedro.io"]["level"] == "WARNING"
