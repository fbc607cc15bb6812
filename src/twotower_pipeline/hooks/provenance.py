"""A manifest for each successful run; a stop when another configuration made the prepared data."""

from __future__ import annotations

import json
from pathlib import Path

from kedro.framework.hooks import hook_impl

from twotower_pipeline.config.project import project_version
from twotower_pipeline.hooks.readable_errors import ReadableError
from twotower_pipeline.io import manifest


class RunManifestHooks:
    """Writes a manifest for each successful run; stops a run whose prepared data does not fit.

    See io/manifest.py. The run id (Kedro's save version, the name of this run's
    version folders) is also put in the catalog as the dataset `run_id`, so a
    node can write it into what it produces (model_config, metrics, report).
    The run's environment (`local` when none was named) is put there too, as
    `run_environment`: training records it in each checkpoint's fingerprint.
    """

    def __init__(self) -> None:
        self._manifest: dict | None = None
        self._environment = "local"

    @hook_impl
    def after_context_created(self, context) -> None:
        self._environment = context.env or "local"

    @hook_impl
    def after_catalog_created(self, catalog, save_version) -> None:
        if "run_environment" in catalog:
            catalog.save("run_environment", self._environment)
        else:
            catalog["run_environment"] = self._environment
        if save_version is None:  # a catalog made to read (a notebook, a script), not a run
            return
        if "run_id" in catalog:  # a catalog entry (for kedro-viz's layer): fill it, not replace it
            catalog.save("run_id", save_version)
        else:
            catalog["run_id"] = save_version

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from kedro.framework.project import pipelines

        project = Path(run_params["project_path"])
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        self._manifest = {
            "run_id": run_params["run_id"],
            "env": run_params.get("env"),
            "pipelines": run_params.get("pipeline_names") or ["__default__"],
            "runtime_params": run_params.get("runtime_params") or {},
            "parameters": parameters,
            "project_version": project_version(),
            "git_commit": manifest.git_commit(project),
            "started": manifest.now(),
        }
        problems = _provenance_problems(
            pipelines, pipeline, catalog, project, run_params.get("env"), parameters
        )
        if problems:
            raise ReadableError(
                "prepared data was made by another configuration than this run's: "
                + "; ".join(problems)
                + ". Make it again with these settings (`kedro run`, or the pipeline that "
                "writes it), or run with the settings it was made with"
            )
        self._manifest["outputs"] = {
            name: path
            for name in sorted(pipeline.all_outputs())
            if (path := _dataset_file(catalog, name, project)) is not None
        }

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self._manifest is None or "run_manifest" not in catalog:
            return
        from kedro.framework.project import pipelines

        project = Path(run_params["project_path"])
        produced = pipelines["__default__"].all_outputs()
        raw = {}
        for name in sorted(pipeline.inputs()):
            path = _dataset_file(catalog, name, project)
            if name not in produced and path is not None and (project / path).exists():
                raw[name] = {"path": path, **manifest.fingerprint(project / path)}
        record = {**self._manifest, "raw_inputs": raw, "ended": manifest.now()}
        catalog.save("run_manifest", json.loads(json.dumps(record, default=str)))
        self._manifest = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._manifest = None


def _dataset_file(catalog, name: str, project: Path) -> str | None:
    """Return a dataset's local file (or version folder) relative to the project, or None."""
    dataset = catalog.get(name) if name in catalog else None
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None or getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    path = Path(str(filepath))
    if path.is_absolute():
        if not path.is_relative_to(project):
            return str(path)
        path = path.relative_to(project)
    return path.as_posix()


def _provenance_problems(pipelines, pipeline, catalog, project, env, parameters) -> list[str]:
    """Return one sentence per way prepared inputs differ from this run (env, settings)."""
    default = pipelines["__default__"]
    produced = default.all_outputs()
    manifests = manifest.read_manifests(project)
    if not manifests:
        return []
    # {(made by, how it differs): [inputs]}: one sentence for inputs that differ alike.
    grouped: dict[tuple[str, str], list[str]] = {}
    for name in sorted(pipeline.inputs() & produced):
        path = _dataset_file(catalog, name, project)
        made_by = _producer(manifests, catalog.get(name), path)
        if made_by is None:
            continue  # made before manifests existed, or by a run that was killed
        if (made_by.get("env") or "") != (env or ""):
            key = (f"environment {made_by.get('env')!r}", "")
            grouped.setdefault(key, []).append(name)
            continue
        names = {
            source.removeprefix("params:")
            for upstream in default.to_outputs(name).nodes
            for source in upstream.inputs
            if source.startswith("params:")
        }
        differences = manifest.provenance_differences(
            made_by.get("parameters", {}), parameters, names
        )
        if differences:
            settings = ", ".join(
                f"{key}={old!r} (now {new!r})" for key, (old, new) in differences.items()
            )
            grouped.setdefault((f"run {made_by['run_id']}", settings), []).append(name)
    problems = []
    for (made_by, settings), names in grouped.items():
        verb = "was" if len(names) == 1 else "were"
        if settings:
            problems.append(f"{', '.join(names)} {verb} made with {settings} by {made_by}")
        else:
            problems.append(f"{', '.join(names)} {verb} made by {made_by}")
    return problems


def _producer(manifests: list[dict], dataset, path: str | None) -> dict | None:
    """Return the manifest of the run that wrote the version of `dataset` this run will load."""
    if path is None:
        return None
    if getattr(dataset, "_version", None) is not None:
        try:
            version = dataset.resolve_load_version()
        except Exception:  # noqa: BLE001 - no version yet: nothing to compare
            return None
        return next((m for m in manifests if m.get("run_id") == version), None)
    return manifest.producer(manifests, path)
