"""Every parameter is checked against the one schema before anything runs."""

from __future__ import annotations

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
        except SettingsError as error:
            raise ReadableError(str(error), error.exit_code) from None

    @hook_impl
    def before_node_run(self, inputs: dict) -> None:
        if "params:neg_ratio" in inputs and "item_index" in inputs:
            check_neg_ratio(inputs["params:neg_ratio"], len(inputs["item_index"]))
