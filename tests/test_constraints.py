"""The Python version the project claims is one every pinned package supports."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    """Return {package: version} of constraints.txt."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    found = (re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line) for line in lines)
    return {match[1]: match[2] for match in found if match}


def lowest_python() -> str:
    """Return the lowest Python version pyproject.toml's requires-python allows (X.Y)."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    return re.search(r">=\s*(\d+\.\d+)", spec)[1]


def test_readme_and_setup_script_claim_the_python_of_pyproject():
    python = lowest_python()
    assert f"(Python {python}+)" in (ROOT / "README.md").read_text()
    major, minor = python.split(".")
    assert f"sys.version_info < ({major}, {minor})" in (ROOT / "scripts/setup.sh").read_text()


@pytest.mark.parametrize("package", sorted(pins()))
def test_each_pinned_package_supports_the_lowest_python_claimed(package):
    try:
        installed = metadata.metadata(package)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed here (an optional extra)")
    if installed["Version"].split("+")[0] != pins()[package].split("+")[0]:
        pytest.skip(f"{package} {installed['Version']} installed, not the pinned version")
    requires = installed.get("Requires-Python")
    if requires:
        assert SpecifierSet(requires).contains(f"{lowest_python()}.0"), (
            f"{package}=={pins()[package]} needs Python {requires}"
        )
