"""Run logging: one line per node saying what it produced, and the console handler for it.

`NodeSummaryHooks` logs, after each node, its outputs' sizes (rows, users,
items), how long it took and, on Linux, the process's peak resident memory
while it ran, and turns health flags into warnings.
Off a terminal and outside Jupyter (CI logs, pipes) the hooks also swap the
console's rich handler for plain one-line records, so nothing wraps at 80
columns.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

_USER_COLUMNS = ("user", "user_id")
_ITEM_COLUMNS = ("item", "item_id")


def describe(value: Any) -> str:
    """Return a short account of one node output: rows, users and items of a table, and so on."""
    columns = getattr(value, "columns", None)
    if columns is not None and hasattr(value, "__len__"):
        parts = [f"{len(value):,} rows"]
        for label, candidates in (("users", _USER_COLUMNS), ("items", _ITEM_COLUMNS)):
            column = next((c for c in candidates if c in columns), None)
            if column is not None:
                parts.append(f"{value[column].nunique():,} {label}")
        return ", ".join(parts)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.nn.Module):
        return f"model, {sum(p.numel() for p in value.parameters()):,} weights"
    if isinstance(value, dict):
        return f"{len(value)} keys"
    if isinstance(value, list | tuple):
        return f"{len(value):,} entries"
    if isinstance(value, str):
        return f"text, {value.count(chr(10)) + 1:,} lines"
    kind = type(value)
    if kind.__name__ == "Figure":
        return f"{kind.__module__.split('.')[0]} figure"
    return kind.__name__


def reset_peak_memory() -> None:
    """Start the process's peak resident memory anew (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def peak_memory_mb() -> float | None:
    """Return the process's peak resident memory since the last reset, in MB (None off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def raised_flags(report: Any) -> list[str]:
    """Return "name: message" of each raised flag of a health report (evaluation/health.py)."""
    if not isinstance(report, dict) or not isinstance(report.get("flags"), list):
        return []
    return [f"{flag['name']}: {flag['message']}" for flag in report["flags"] if flag["raised"]]


class NodeSummaryHooks:
    """Logs one line per node (what it produced, in how long) and a warning per health flag."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._done = 0
        self._total = 0

    @hook_impl
    def after_context_created(self) -> None:
        _plain_console_off_terminal()

    @hook_impl
    def before_pipeline_run(self, pipeline) -> None:
        self._done, self._total = 0, len(pipeline.nodes)
        _hide_kedro_node_lines()

    @hook_impl
    def before_node_run(self, node) -> None:
        reset_peak_memory()
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node, outputs: dict[str, Any]) -> None:
        seconds = time.perf_counter() - self._started.pop(node.name, time.perf_counter())
        self._done += 1
        produced = "; ".join(f"{name} ({describe(value)})" for name, value in outputs.items())
        step = f"[{self._done}/{self._total}] " if self._total else ""
        peak = peak_memory_mb()
        spent = f"{seconds:.1f} s" + (f", peak {peak:,.0f} MB" if peak is not None else "")
        logger.info("%s%s (%s): %s", step, node.name, spent, produced or "no outputs")
        for name, value in outputs.items():
            for message in raised_flags(value):
                logger.warning("health flag in %s: %s", name, message)

    @hook_impl
    def on_node_error(self, node) -> None:
        self._started.pop(node.name, None)


# Kedro's own per-node lines; NodeSummaryHooks says the same in one line per node.
_KEDRO_NODE_MESSAGES = frozenset(
    {"Running node: %s", "Completed node: %s", "Completed %d out of %d tasks"}
)


class KedroNodeLinesFilter(logging.Filter):
    """Drops Kedro's per-node lines; `NodeSummaryHooks` puts it on the root handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str):
            return True
        # The advice to try --async, on every run, says nothing about this run.
        return message not in _KEDRO_NODE_MESSAGES and not message.startswith(
            "Using synchronous mode"
        )


def _hide_kedro_node_lines() -> None:
    # Kedro forbids factories in logging.yml, so the filter is attached here, and
    # only when the summaries it stands in for are logged.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, KedroNodeLinesFilter) for f in handler.filters):
            handler.addFilter(KedroNodeLinesFilter())


def _interactive() -> bool:
    from rich.console import Console  # rich comes with kedro

    console = Console()
    return console.is_terminal or console.is_jupyter


def _plain_console_off_terminal(fmt: str = "%(asctime)s %(levelname)-7s %(message)s") -> None:
    # Off a terminal (CI logs, pipes) rich wraps every record at 80 columns; there
    # the console handler becomes a plain one-line-per-record stream handler.
    # Kedro only accepts handler classes from `logging` and `kedro.logging` in
    # logging.yml, so the swap happens here.
    if _interactive():
        return
    from kedro.logging import RichHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, RichHandler):
            plain = logging.StreamHandler(sys.stdout)
            plain.setLevel(handler.level)
            plain.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
            for log_filter in handler.filters:
                plain.addFilter(log_filter)
            root.removeHandler(handler)
            root.addHandler(plain)
