"""Environments never share outputs: every environment but the default writes under data/<env>/.

`kedro run --env=smoke` once wrote the same files as plain `kedro run`, so a
later `kedro run --pipeline=train` trained on the 300-user smoke data without
a word. The config loader here moves every output path of a non-default
environment (catalog `filepath`s and parameters that are paths, such as the
checkpoint folder) from `data/...` to `data/<env>/...`; versioned datasets
thus keep their versions per environment too. Raw inputs (`data/01_raw/`)
are the user's files and stay where the docs say. The default environment
(`local`, or none) keeps the documented paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from omegaconf import OmegaConf

DEFAULT_ENVIRONMENTS = frozenset({"", "local", "base"})
DATA = "data/"
SHARED = "data/01_raw/"


def data_root(env: str | None) -> str:
    """Return the folder an environment's outputs live under: `data` or `data/<env>`."""
    return "data" if (env or "") in DEFAULT_ENVIRONMENTS else f"data/{env}"


def relocate_path(path: str, env: str | None) -> str:
    """Return `path` moved under the environment's folder (raw inputs and the default stay)."""
    if (env or "") in DEFAULT_ENVIRONMENTS or not path.startswith(DATA) or path.startswith(SHARED):
        return path
    if path.startswith(f"{data_root(env)}/"):
        return path  # already the environment's own
    return f"{data_root(env)}/{path[len(DATA) :]}"


def relocate(config: Any, env: str | None, catalog: bool) -> Any:
    """Return a catalog (only `filepath` keys) or parameters (any path string) relocated."""
    if isinstance(config, dict):
        return {
            key: (
                relocate_path(value, env)
                if isinstance(value, str) and (key == "filepath" or not catalog)
                else relocate(value, env, catalog)
            )
            for key, value in config.items()
        }
    if isinstance(config, list) and not catalog:
        return [relocate(value, env, catalog) for value in config]
    if isinstance(config, str) and not catalog:
        return relocate_path(config, env)
    return config


class EnvironmentConfigLoader(OmegaConfigLoader):
    """OmegaConfigLoader whose non-default environments write under data/<env>/.

    `${project_root:}` in any config file is the absolute path of the project whose
    conf/ this loader reads (the MLflow store is named by it: conf/base/mlflow.yml),
    whatever folder the session was started from (a notebook's, a benchmark's).
    """

    def __getitem__(self, key: str) -> dict[str, Any]:
        # OmegaConf's resolvers are global: bind this loader's root just before resolving.
        root = Path(self.conf_source).resolve().parent.as_posix()
        OmegaConf.register_new_resolver("project_root", lambda: root, replace=True)
        config = super().__getitem__(key)
        if key in ("catalog", "parameters"):
            env = self.env or self.default_run_env
            config = relocate(config, env, catalog=key == "catalog")
        return config
