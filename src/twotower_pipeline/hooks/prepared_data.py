"""A clear stop, before anything runs, when a pipeline's inputs have never been produced."""

from __future__ import annotations

from pathlib import Path

import click
from kedro.framework.hooks import hook_impl

from twotower_pipeline.io.datasets import OptionalDataset

# Optional raw inputs and the parameter that says whether a run reads them.
OPTIONAL_INPUTS = {"item_features": "item", "user_features": "user"}


class MissingPreparedDataError(click.ClickException):
    """Raised before a run starts when its inputs have never been produced.

    A ClickException, so `kedro run` ends with the message alone, not a stack trace.
    """


class PreparedDataHooks:
    """Checks, before any node runs, that every input the pipeline reads exists.

    Optional raw inputs (the side-feature tables) count when the parameters map
    their columns (`features.item` is not null): a missing file is then found
    at the start, not after ingestion and the split have run.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        _check_optional_inputs(pipeline, catalog)
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


def _check_optional_inputs(pipeline, catalog) -> None:
    """Raise MissingPreparedDataError for an optional input the parameters use but is absent."""
    features = catalog.load("params:features") if "params:features" in catalog else None
    if not isinstance(features, dict):
        return
    raw = catalog.get("raw_interactions") if "raw_interactions" in catalog else None
    # The synthetic log (pandas or Spark) writes its feature tables as it is first read.
    generated = raw.companion_paths() if hasattr(raw, "companion_paths") else []
    for name, side in OPTIONAL_INPUTS.items():
        dataset = catalog.get(name) if name in pipeline.inputs() and name in catalog else None
        if not isinstance(dataset, OptionalDataset) or features.get(side) is None:
            continue
        path = dataset.filepath
        if path is None or dataset.file_exists() or Path(path) in generated:
            continue  # the synthetic log writes its feature tables as it is first read
        raise MissingPreparedDataError(
            f"{name}: the file {_shown(path)} does not exist, but features.{side} maps its "
            f"columns. Put the file there, point the catalog's {name} at yours, or set "
            f"features: {{{side}: null}} in parameters (features: {{item: null, user: null}} "
            "when the data has no side features)"
        )


def _shown(path: str) -> str:
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path
