"""Hooks: a clear stop when a pipeline needs prepared data that is not there yet."""

from __future__ import annotations

import logging

import click
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class MissingPreparedDataError(click.ClickException):
    """Raised before a run starts when its inputs have never been produced.

    A ClickException, so `kedro run` ends with the message alone, not a stack trace.
    """


class PreparedDataHooks:
    """Checks, before any node runs, that every input the pipeline reads exists."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        missing = []
        for name in sorted(pipeline.inputs()):
            if name == "parameters" or name.startswith("params:"):
                continue
            if name in catalog and not catalog.exists(name):
                missing.append(name)
        if not missing:
            return
        wanted = run_params.get("pipeline_names") or ["__default__"]
        message = (
            f"Pipeline {', '.join(wanted)} needs data that does not exist yet: "
            f"{', '.join(missing)}. Run `kedro run --pipeline=data_processing` first "
            "(or plain `kedro run` for everything)."
        )
        raise MissingPreparedDataError(message)
