"""A clear stop, before anything runs, when a pipeline's inputs have never been produced."""

from __future__ import annotations

import click
from kedro.framework.hooks import hook_impl


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
        from kedro.framework.project import pipelines

        # A Spark environment writes `x@spark` and reads `x@pandas`: one dataset (transcoding).
        prepared = {name.split("@")[0] for name in pipelines["__default__"].all_outputs()}
        raw = [name for name in missing if name.split("@")[0] not in prepared]
        if raw:
            files = ", ".join(f"{name} ({_describe_path(catalog.get(name))})" for name in raw)
            message = (
                f"The raw data does not exist: {files}. Put the file there, or point the "
                "catalog at yours (README: 'Your own data'; docs/data.md for MovieLens)."
            )
        else:
            wanted = run_params.get("pipeline_names") or ["__default__"]
            message = (
                f"Pipeline {', '.join(wanted)} needs data that does not exist yet: "
                f"{', '.join(missing)}. Run `kedro run --pipeline=data_processing` first "
                "(or plain `kedro run` for everything)."
            )
        raise MissingPreparedDataError(message)


def _describe_path(dataset) -> str:
    filepath = getattr(dataset, "_filepath", None)
    return str(filepath) if filepath is not None else type(dataset).__name__
