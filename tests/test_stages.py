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

from safetydrift.stage_code import StageCode, rewrite_deps

CODE = StageCode(ROOT)
SOURCES = CODE.sources
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_package_init_runs_no_code():
    # Excluded from the closures below: every `safetydrift.x` import runs it.
    tree = ast.parse((SOURCES / "__init__.py").read_text())
    assert all(isinstance(n, ast.Expr | ast.Assign) for n in tree.body)
    assert not any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(tree))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_depends_on_exactly_the_code_it_runs(name):
    stage = STAGES[name]
    expected = set(CODE.code_deps(stage["cmd"]))
    code = {d for d in stage["deps"] if d.endswith(".py")}
    missing, extra = sorted(expected - code), sorted(code - expected)
    assert not missing and not extra, (
        f"{name}: add {missing} to its deps; remove {extra} "
        "(`python -m safetydrift.stage_code --write` does it)"
    )


def test_the_deps_rewrite_replaces_only_the_code_lines_of_each_stage():
    stale = (
        "stages:\n  # a comment\n  eval_chrf:\n    cmd: python stages/eval_chrf.py --cell base\n"
        "    deps:\n      - stages/eval_chrf.py\n      - src/safetydrift/gone.py\n"
        "      - generations/chrf/base\n    params: [chrf.seed]\n"
    )
    rewritten = rewrite_deps(stale, CODE)
    assert rewritten.splitlines()[:6] == stale.splitlines()[:6]
    assert "gone.py" not in rewritten and "      - generations/chrf/base\n" in rewritten
    assert [line[8:] for line in rewritten.splitlines() if line.endswith(".py")] == CODE.code_deps(
        "python stages/eval_chrf.py"
    )
    assert rewrite_deps(rewritten, CODE) == rewritten


def declared_in_script(script: Path) -> list[str] | dict[str, list[str]]:
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["PARAMS"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{script} has no module-level PARAMS list")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_declares_exactly_the_params_its_script_reads(name):
    stage = STAGES[name]
    declared = declared_in_script(CODE.script(stage["cmd"]))
    if isinstance(declared, dict):  # one script, several measurements: `generate.py refusal`
        declared = declared[shlex.split(stage["cmd"])[2]]
    # `methods.${item.method}` in dvc.yaml is `methods.{method}` in the script's PARAMS.
    in_dvc = [re.sub(r"\$\{item\.(\w+)\}", r"{\1}", p) for p in stage.get("params", [])]
    assert in_dvc == declared
