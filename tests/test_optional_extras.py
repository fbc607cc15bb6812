"""A missing optional extra is named as missing; an installed but broken one is not."""

from __future__ import annotations

import builtins

import pandas as pd
import pytest

from twotower_pipeline.config.errors import RunFailedError
from twotower_pipeline.config.project import describe_missing_extra
from twotower_pipeline.evaluation.baselines import als_scorer
from twotower_pipeline.hooks.readable_errors import ReadableError, ReadableErrorHooks

TRAIN = pd.DataFrame({"user": [0, 1], "item": [0, 1], "timestamp": [1, 2]})
ALS = {"factors": 2, "regularization": 0.1, "alpha": 1.0, "iterations": 1}


def failing_import(monkeypatch, error: ImportError) -> None:
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("implicit"):
            raise error
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_implicit_not_installed_means_no_als_scorer(monkeypatch):
    failing_import(monkeypatch, ModuleNotFoundError("No module named 'implicit'", name="implicit"))
    assert als_scorer(TRAIN, 2, 2, ALS, seed=0) is None


@pytest.mark.parametrize(
    "error",
    [
        ImportError("libgomp.so.1: cannot open shared object file"),
        ModuleNotFoundError("No module named 'threadpoolctl'", name="threadpoolctl"),
    ],
)
def test_a_broken_implicit_is_reported_as_broken_not_as_absent(monkeypatch, error):
    failing_import(monkeypatch, error)
    with pytest.raises(RunFailedError) as raised:
        als_scorer(TRAIN, 2, 2, ALS, seed=0)
    message = str(raised.value)
    assert message.startswith("the ALS baseline cannot import implicit, which is installed: ")
    assert str(error) in message and "evaluation.als.enabled: false" in message


def test_a_missing_optional_library_names_its_extra_in_one_line():
    missing = ModuleNotFoundError("No module named 'faiss'", name="faiss")
    with pytest.raises(ReadableError) as raised:
        ReadableErrorHooks().on_pipeline_error(missing)
    assert raised.value.format_message() == (
        "the optional library faiss is not installed; it comes with the [ann] extra: "
        "pip install -e '.[ann]'"
    )
    assert raised.value.exit_code == 2


def test_a_missing_module_that_is_no_extra_is_left_as_it_is():
    assert describe_missing_extra(ModuleNotFoundError("x", name="not_a_dependency")) is None
