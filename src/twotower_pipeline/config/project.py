"""The project's own metadata: its version, and the extra that brings each optional library."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path


def project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twotower_pipeline")
    except PackageNotFoundError:
        return "unknown"


def describe_missing_extra(error: ModuleNotFoundError) -> str | None:
    """Return the one line for an optional library that is not installed, or None."""
    module = (error.name or "").split(".")[0]
    extra = _optional_modules().get(module)
    if extra is None:
        return None
    return (
        f"the optional library {module} is not installed; it comes with the [{extra}] "
        f"extra: pip install -e '.[{extra}]'"
    )


def _optional_modules() -> dict[str, str]:
    """Return {module: extra} for the libraries of the project's optional extras.

    Read from pyproject.toml in a checkout (an editable install's metadata is
    as old as the install), else from the installed package's metadata.
    """
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text())["project"]
        core = {re.split(r"[\[<>=~; ]", r)[0].lower() for r in project.get("dependencies", [])}
        requirements = [
            f"{requirement}; extra == '{extra}'"
            for extra, listed in project.get("optional-dependencies", {}).items()
            for requirement in listed
            if re.split(r"[\[<>=~; ]", requirement)[0].lower() not in core
        ]
    else:
        from importlib import metadata

        try:
            requirements = metadata.requires("twotower_pipeline") or []
        except metadata.PackageNotFoundError:
            return {}
    modules = {}
    for requirement in requirements:
        found = _EXTRA_REQUIREMENT.match(requirement)
        if not found or found[2] == "dev":
            continue
        distribution = found[1].lower()
        module = _MODULE_OF.get(distribution, distribution.replace("-", "_"))
        modules.setdefault(module, found[2])
    return modules


_EXTRA_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)[^;]*;\s*extra\s*==\s*['\"]([^'\"]+)['\"]")
# Distributions whose module has another name than theirs.
_MODULE_OF = {"faiss-cpu": "faiss", "faiss-gpu": "faiss", "scikit-learn": "sklearn"}
