"""Every parameter is checked against the one schema before anything runs."""

from __future__ import annotations

from pathlib import Path

from kedro.framework.hooks import hook_impl

from twotower_pipeline.config.errors import SettingsError
from twotower_pipeline.config.schema import check_neg_ratio, check_parameters
from twotower_pipeline.hooks.readable_errors import ReadableError


class SettingsHooks:
    """Every parameter is checked against one schema before anything runs (config/schema.py).

    The check runs as the context is created, before any pipeline, catalog or
    other hook sees the parameters; a bad setting ends the run with one line
    and exit code 2. The one rule that needs the data (neg_ratio below the
    number of items) is checked as the node that draws negatives starts.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        try:
            check_parameters(context.params)
            check_folder_settings(context.params, Path(context.project_path))
        except SettingsError as error:
            raise ReadableError(str(error), error.exit_code) from None

    @hook_impl
    def before_node_run(self, inputs: dict) -> None:
        if "params:neg_ratio" in inputs and "item_index" in inputs:
            check_neg_ratio(inputs["params:neg_ratio"], len(inputs["item_index"]))


# Parameters that name a folder the run writes into.
FOLDER_SETTINGS = (("training", "checkpoint_dir"),)


def check_folder_settings(params: dict, project: Path) -> None:
    """Raise SettingsError when a folder setting names a file (or a folder inside a file)."""
    for block, key in FOLDER_SETTINGS:
        value = (params.get(block) or {}).get(key)
        if not isinstance(value, str) or "://" in value:
            continue
        folder = Path(value) if Path(value).is_absolute() else project / value
        for part in (folder, *folder.parents):
            if part.exists():
                if not part.is_dir():
                    raise SettingsError(
                        f"bad settings (1): {block}.{key}={value!r} must name a folder, but "
                        f"{_shown(part, project)} is a file; point it at a folder (or move "
                        "the file)"
                    )
                break


def _shown(path: Path, project: Path) -> str:
    try:
        return path.relative_to(project).as_posix()
    except ValueError:
        return path.as_posix()
