"""`kedro package`: the wheel and the config archive run from a fresh virtual environment.

The fresh environment gets the project's wheel with `pip install --no-deps` and
finds the dependencies (kedro, torch, ...) in this environment's site-packages
through a .pth file: a full install would download or copy gigabytes of wheels,
and what is tested is the package, not pip's resolver. The run happens in an
empty folder outside the project, so nothing of the checkout is read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PACKAGE = "twotower_pipeline"


def run(command: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONPATH": ""}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def packaged(make_project_copy) -> Path:
    """Return the dist/ folder of `kedro package` run in a project copy."""
    project = make_project_copy("package")
    kedro = Path(sys.executable).parent / "kedro"
    run([str(kedro), "package"], project, timeout=600)
    return project / "dist"


@pytest.fixture(scope="module")
def fresh_python(packaged, tmp_path_factory) -> Path:
    """Return the python of a new virtual environment holding the project's wheel only."""
    folder = tmp_path_factory.mktemp("fresh") / "venv"
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            folder,
            60,
        ).stdout.strip()
    )
    # Plain path lines: this environment's .pth files (the editable install) are not read.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(packaged.glob(f"{PACKAGE}-*.whl"))
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    run([*pip, "--no-index", "--quiet", str(wheel)], folder, timeout=300)
    return python


def test_kedro_package_writes_the_wheel_and_a_config_archive_without_local(packaged):
    import tarfile

    assert list(packaged.glob(f"{PACKAGE}-*-py3-none-any.whl"))
    with tarfile.open(packaged / f"conf-{PACKAGE}.tar.gz") as archive:
        names = archive.getnames()
    assert "conf/base/parameters_recommend.yml" in names
    assert not [n for n in names if n.startswith("conf/local/") and n.endswith(".yml")]


def test_the_installed_package_runs_from_its_config_archive(packaged, fresh_python, tmp_path):
    where = run(
        [str(fresh_python), "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], tmp_path, 60
    ).stdout.strip()
    assert Path(where).is_relative_to(fresh_python.parents[1]), where  # the wheel, not src/
    archive = packaged / f"conf-{PACKAGE}.tar.gz"
    command = [str(fresh_python), "-m", PACKAGE, "--conf-source", str(archive)]
    run([*command, "--env", "smoke", "--pipeline", "data_processing"], tmp_path, timeout=600)
    assert (tmp_path / "data/smoke/05_model_input/train_interactions.parquet").exists()
    assert (tmp_path / "data/smoke/03_primary/item_index.parquet").exists()
