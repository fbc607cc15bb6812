"""The package's layers: imports go down, frameworks stay in adapters, privates stay home.

The walk reads every module of `src/twotower_pipeline` with `ast` (type-only
imports under `if TYPE_CHECKING:` included, since they are imports all the
same) and checks three rules:

- a module imports only from its own subpackage or from a lower layer;
- Kedro, PySpark, MLflow and faiss are imported only by the modules allowed them;
- no module imports another module's `_private` name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "twotower_pipeline"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Lowest first. A subpackage may import from any subpackage of a lower rank.
LAYERS: dict[str, int] = {
    "config": 0,
    "data": 1,
    "ranking": 1,
    "model": 2,
    "training": 3,
    "evaluation": 4,
    "reporting": 5,
    "io": 6,
    "spark": 7,
    "hooks": 7,
    "pipelines": 8,
    # The package's own entry files sit above everything.
    "settings": 9,
    "pipeline_registry": 9,
    "__main__": 9,
    "__init__": 9,
}

# Which modules may import each framework (prefixes of dotted module names below the package).
FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "kedro": (
        "config.loader",
        "io.",
        "hooks.",
        "pipelines.",
        "spark.hooks",
        "spark.datasets",
        "settings",
        "pipeline_registry",
        "__main__",
    ),
    "kedro_datasets": ("io.", "hooks.", "spark.datasets"),
    "kedro_mlflow": ("hooks.mlflow",),
    "pyspark": ("spark.",),
    "mlflow": ("io.tracking", "io.serving"),
    "faiss": ("evaluation.index",),
}


def module_name(path: Path, source: Path = SOURCE) -> str:
    """Return the dotted name of a source file below the package (`training.loop`)."""
    parts = list(path.relative_to(source).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, source: Path = SOURCE) -> list[tuple[int, str, list[str]]]:
    """Return (line, imported module, imported names) for every import in a file."""
    name = module_name(path, source)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([PACKAGE, *base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def layer_of(module: str) -> tuple[str, int]:
    """Return a module's subpackage (its first name part) and that subpackage's rank."""
    top = module.split(".")[0]
    if top not in LAYERS:
        raise AssertionError(f"{module}: subpackage {top!r} has no layer in tests/test_layers.py")
    return top, LAYERS[top]


def violations(source: Path = SOURCE) -> list[str]:
    """Return one line for every import that breaks a rule, `file:line: why`."""
    found = []
    for path in sorted(source.rglob("*.py")):
        here = module_name(path, source)
        top, rank = layer_of(here)
        where = f"{path.relative_to(source.parent)}"
        for line, target, names in imports_of(path, source):
            root = target.split(".")[0]
            if root in FRAMEWORKS and not here.startswith(FRAMEWORKS[root]):
                found.append(f"{where}:{line}: imports {root}, which lives in {FRAMEWORKS[root]}")
            if root != PACKAGE:
                continue
            inner = target[len(PACKAGE) + 1 :]
            # `from twotower_pipeline.data import sampling`: the names are modules.
            folder = source.joinpath(*inner.split(".")) if inner else source
            if not inner or folder.is_dir():
                prefix = f"{inner}." if inner else ""
                targets = [(f"{prefix}{name}", []) for name in names if name != "*"]
            else:
                targets = [(inner, names)]
            for module, imported in targets:
                their_top, their_rank = layer_of(module)
                if their_top != top and their_rank >= rank:
                    why = f"{here} (layer {rank}) imports {module} (layer {their_rank})"
                    found.append(f"{where}:{line}: {why}")
                if module != here:
                    for private in (
                        n for n in imported if n.startswith("_") and n != "__version__"
                    ):
                        found.append(f"{where}:{line}: imports {module}'s private name {private}")
    return found


def test_imports_only_go_down_frameworks_stay_in_adapters_and_privates_stay_home():
    assert violations() == []


def test_every_subpackage_has_a_layer():
    tops = {module_name(path).split(".")[0] for path in SOURCE.rglob("*.py")}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


@pytest.mark.parametrize(
    ("relative", "text", "expected"),
    [
        # A back-import: the data layer reaching up into the model.
        (
            "data/planted.py",
            "from twotower_pipeline.model.towers import TwoTowerModel\n",
            "data.planted (layer 1) imports model.towers (layer 2)",
        ),
        # Type-only imports count too.
        (
            "ranking/planted.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from twotower_pipeline.training import loop\n",
            "ranking.planted (layer 1) imports training.loop (layer 3)",
        ),
        # Sideways between two subpackages of one rank.
        (
            "data/planted.py",
            "from twotower_pipeline.ranking import metrics\n",
            "data.planted (layer 1) imports ranking.metrics (layer 1)",
        ),
        ("model/planted.py", "import kedro\n", "imports kedro"),
        ("data/planted.py", "from pyspark.sql import functions\n", "imports pyspark"),
        (
            "evaluation/planted.py",
            "from twotower_pipeline.config.errors import _hidden\n",
            "private name _hidden",
        ),
    ],
)
def test_a_planted_violation_is_found(tmp_path, relative, text, expected):
    copy = tmp_path / PACKAGE
    for path in SOURCE.rglob("*.py"):
        target = copy / path.relative_to(SOURCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (copy / relative).write_text(text, encoding="utf-8")
    found = violations(copy)
    assert any(expected in line for line in found), found


def import_cycles(source: Path = SOURCE) -> list[list[str]]:
    """Return the module cycles of the import graph (imports inside functions included)."""
    known = {module_name(path, source) for path in source.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in source.rglob("*.py"):
        here = module_name(path, source)
        edges = graph.setdefault(here, set())
        for _, target, names in imports_of(path, source):
            if not target.startswith(PACKAGE):
                continue
            inner = target[len(PACKAGE) + 1 :]
            for candidate in [inner, *(f"{inner}.{n}".lstrip(".") for n in names)]:
                if candidate in known and candidate != here:
                    edges.add(candidate)
    cycles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package's __init__ importing its own modules is not a cycle worth naming.
    return [c for c in cycles if not any(m == c[0].rsplit(".", 1)[0] for m in c[1:])]


def test_no_module_imports_one_that_imports_it_back():
    assert import_cycles() == []
