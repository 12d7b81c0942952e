"""dvc.yaml describes the code behind every output: each stage lists every project module its
script imports (transitively), and exactly the params keys its script reads."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

PACKAGE = "safetydrift"
SOURCES = ROOT / "src" / PACKAGE
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(module: str) -> Path | None:
    """The file of a `safetydrift.x` module (or package), None for other libraries."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) == 1:
        return None
    path = SOURCES.joinpath(*parts[1:])
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    raise AssertionError(f"{module} is imported but has no file under {SOURCES}")


def imported_files(path: Path) -> set[Path]:
    """Project modules `path` imports anywhere: at its top and inside functions alike, since a
    function's import runs whenever the stage calls it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from safetydrift import tracking` imports the submodule `safetydrift.tracking`.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            candidate = SOURCES.joinpath(*parts[1:])
            if len(parts) > 1 and (candidate.with_suffix(".py").exists() or candidate.is_dir()):
                found.add(module_file(name))
    return found


def with_packages(module: Path) -> set[Path]:
    """A module and the `__init__.py` of each package above it, which importing it runs too."""
    packages = {
        parent / "__init__.py"
        for parent in module.parents
        if parent != SOURCES and SOURCES in parent.parents and (parent / "__init__.py").exists()
    }
    return {module} | packages


def import_closure(script: Path) -> set[Path]:
    closure, todo = set(), [script]
    while todo:
        for imported in imported_files(todo.pop()):
            for module in with_packages(imported) - closure:
                closure.add(module)
                todo.append(module)
    return closure


def stage_script(stage: dict) -> Path:
    words = shlex.split(stage["cmd"])
    assert words[0] == "python" and words[1].startswith("stages/"), stage["cmd"]
    return ROOT / words[1]


def test_the_package_init_runs_no_code():
    # Excluded from the closures below: every `safetydrift.x` import runs it.
    tree = ast.parse((SOURCES / "__init__.py").read_text())
    assert all(isinstance(n, ast.Expr | ast.Assign) for n in tree.body)
    assert not any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(tree))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_depends_on_exactly_the_code_it_runs(name):
    stage = STAGES[name]
    script = stage_script(stage)
    expected = {script.relative_to(ROOT).as_posix()} | {
        module.relative_to(ROOT).as_posix() for module in import_closure(script)
    }
    code = {d for d in stage["deps"] if d.endswith(".py")}
    missing, extra = sorted(expected - code), sorted(code - expected)
    assert not missing and not extra, f"{name}: add {missing} to its deps; remove {extra}"


def declared_in_script(script: Path) -> list[str] | dict[str, list[str]]:
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["PARAMS"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{script} has no module-level PARAMS list")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_declares_exactly_the_params_its_script_reads(name):
    stage = STAGES[name]
    declared = declared_in_script(stage_script(stage))
    if isinstance(declared, dict):  # one script, several measurements: `generate.py refusal`
        declared = declared[shlex.split(stage["cmd"])[2]]
    # `methods.${item.method}` in dvc.yaml is `methods.{method}` in the script's PARAMS.
    in_dvc = [re.sub(r"\$\{item\.(\w+)\}", r"{\1}", p) for p in stage.get("params", [])]
    assert in_dvc == declared
