"""One schema for all parameters: every shipped environment passes, every bad setting is one line.

The unit tests check the schema on the parameters the shipped environments
load; the command-line tests check what a user sees: one line, exit code 2,
no traceback, nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from twotower_pipeline.config.errors import SettingsError
from twotower_pipeline.config.loader import EnvironmentConfigLoader
from twotower_pipeline.config.schema import (
    Training,
    check_neg_ratio,
    check_parameters,
    parameter_block,
)

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENTS = sorted(
    path.name
    for path in (ROOT / "conf").iterdir()
    if path.is_dir() and path.name != "local" and any(path.glob("parameters*.yml"))
)
TAIL = " (conf/*/parameters*.yml or --params)"


def parameters(env: str | None = None) -> dict:
    loader = EnvironmentConfigLoader(
        conf_source=str(ROOT / "conf"),
        env=env,
        base_env="base",
        default_run_env="local",
        merge_strategy={"parameters": "soft", "catalog": "soft", "globals": "soft"},
    )
    return loader["parameters"]


@pytest.mark.parametrize("env", [None, *ENVIRONMENTS])
def test_every_shipped_environment_passes_the_schema(env):
    check_parameters(parameters(env))


def message_for(**changes) -> str:
    values = parameters("smoke")
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        block = values
        for parent in parents:
            block = block[parent]
        block[key] = value
    with pytest.raises(SettingsError) as raised:
        check_parameters(values)
    return str(raised.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"neg_ration": 50}, "unknown parameter neg_ration (did you mean neg_ratio?)"),
        (
            {"training__learnig_rate": 0.1},
            "unknown parameter training.learnig_rate (did you mean training.learning_rate?)",
        ),
        (
            {"evaluation__als__factor": 8},
            "unknown parameter evaluation.als.factor (did you mean evaluation.als.factors?)",
        ),
        ({"neg_ratio": 0}, "neg_ratio=0: input should be greater than or equal to 1"),
        ({"neg_ratio": -1}, "neg_ratio=-1: input should be greater than or equal to 1"),
        ({"neg_ratio": 2.5}, "neg_ratio=2.5: input should be a valid integer"),
        ({"logit_scale": 0.0}, "logit_scale=0.0: input should be greater than 0"),
        ({"logit_scale": -1.0}, "logit_scale=-1.0: input should be greater than 0"),
        ({"logit_scale": 200.0}, "logit_scale=200.0 is above its clamp model.max_logit_scale"),
        ({"num_epochs": 0}, "num_epochs=0: input should be greater than or equal to 1"),
        ({"evaluation__headline_k": 7}, "evaluation: headline_k=7 must be one of ks=[10, 50]"),
        (
            {"training__lr_schedule": "cosin"},
            "training.lr_schedule='cosin': input should be 'constant' or 'cosine'",
        ),
        ({"ingestion__encoding": "utf-9"}, "encoding 'utf-9' is not one Python knows"),
        (
            {"training__compile_rows": "on"},  # a string: YAML and --params make on a boolean
            "training.compile_rows: should be auto, true or false, not 'on'",
        ),
        (
            {"split__temporal_quantiles": [0.9, 0.8]},
            "temporal_quantiles must be [validation, test] with validation < test",
        ),
        (
            {"model_selection__alternatives": {"wide": {"embeding_dim": 32}}},
            "model_selection.alternatives.wide sets ['embeding_dim'], which are not model keys",
        ),
        (
            {"model_selection__alternatives": {"wide": {"embedding_dim": 0}}},
            "model_selection.alternatives.wide.embedding_dim=0: input should be greater than or "
            "equal to 1",
        ),
        (
            {"model_selection__alternatives": {"soft": {"training": {"loss": "sofmax"}}}},
            "model_selection.alternatives.soft.training.loss='sofmax': input should be 'bce' or "
            "'softmax'",
        ),
        (
            {"model_selection__alternatives": {"soft": {"training": {"device": "cuda"}}}},
            "model_selection.alternatives.soft.training sets ['device']: a candidate may set",
        ),
        (
            {"model_selection__alternatives": {"a/b": {"user_id": True}}},
            "model_selection.alternatives.a/b: a name of letters, digits, _ or -",
        ),
        (
            {"model_selection__alternatives": {"ensemble": {"user_id": True}}},
            "model_selection.alternatives.ensemble: a name of letters, digits, _ or - (it names "
            "a checkpoint folder), other than 'configured' and 'ensemble'",
        ),
    ],
)
def test_each_bad_setting_is_named_in_one_line(changes, expected):
    message = message_for(**changes)
    assert message.startswith("bad settings (1): ") and message.endswith(TAIL)
    assert expected in message
    assert "\n" not in message


def test_several_bad_settings_are_all_named():
    message = message_for(neg_ratio=0, num_epochs=0)
    assert message.startswith("bad settings (2): ")
    assert "neg_ratio=0" in message and "num_epochs=0" in message


def test_a_missing_key_is_reported_not_filled_in():
    values = parameters()
    del values["training"]["batch_size"]
    with pytest.raises(SettingsError, match="missing parameter training.batch_size"):
        check_parameters(values)


def test_a_block_is_handed_out_typed_and_checked_as_the_whole_checks_it():
    values = parameters()
    training = parameter_block("training", values["training"])
    assert isinstance(training, Training)
    assert training.batch_size == values["training"]["batch_size"]
    assert training == check_parameters(values).training
    values["training"]["bacth_size"] = values["training"].pop("batch_size")
    with pytest.raises(SettingsError) as alone:
        parameter_block("training", values["training"])
    with pytest.raises(SettingsError) as whole:
        check_parameters(values)
    expected = (
        "bad settings (2): missing parameter training.batch_size; unknown parameter "
        "training.bacth_size (did you mean training.batch_size?)" + TAIL
    )
    assert str(alone.value) == str(whole.value) == expected


def test_only_a_block_is_handed_out_as_a_block():
    with pytest.raises(KeyError, match="'neg_ratio' is not a parameter block"):
        parameter_block("neg_ratio", 5)


def test_neg_ratio_must_leave_items_to_draw_from():
    check_neg_ratio(199, 200)
    with pytest.raises(SettingsError, match=r"neg_ratio=200 must be below the number of items"):
        check_neg_ratio(200, 200)


def kedro_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    kedro = Path(sys.executable).with_name("kedro")
    return subprocess.run(
        [str(kedro), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


def written(project: Path) -> list[str]:
    return sorted(
        str(p.relative_to(project))
        for p in (project / "data").rglob("*")
        if p.is_file() and p.name != ".gitkeep"
    )


@pytest.fixture(scope="module")
def project(make_project_copy) -> Path:
    return make_project_copy("settings")


def test_a_misspelt_runtime_parameter_stops_the_run_with_one_line(project):
    before = written(project)
    result = kedro_cli(project, "run", "--env=smoke", "--params=neg_ration=50")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: bad settings (1): unknown parameter neg_ration (did you mean neg_ratio?)" + TAIL
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert written(project) == before


def test_a_misspelt_key_in_a_yml_stops_the_run_with_one_line(project):
    local = project / "conf" / "local" / "parameters.yml"
    local.write_text("training:\n  bacth_size: 64\n")
    try:
        result = kedro_cli(project, "run")
    finally:
        local.unlink()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: bad settings (1): unknown parameter training.bacth_size "
        "(did you mean training.batch_size?)" + TAIL
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert written(project) == []
