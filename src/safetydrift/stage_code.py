"""The code behind each DVC stage: its script and every project module the script imports,
transitively. `tests/test_stages.py` fails when a stage's deps in dvc.yaml disagree with it;
`python -m safetydrift.stage_code --write` rewrites those deps lists (comments and everything
else in dvc.yaml stay as they are).

A function-level import counts like a top-level one: it runs whenever the stage calls it.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from pathlib import Path

PACKAGE = "safetydrift"


class StageCode:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources = root / "src" / PACKAGE

    def module_file(self, module: str) -> Path | None:
        """The file of a `safetydrift.x` module (or package), None for other libraries."""
        parts = module.split(".")
        if parts[0] != PACKAGE or len(parts) == 1:
            return None
        path = self.sources.joinpath(*parts[1:])
        if path.with_suffix(".py").exists():
            return path.with_suffix(".py")
        if (path / "__init__.py").exists():
            return path / "__init__.py"
        raise ValueError(f"{module} is imported but has no file under {self.sources}")

    def imported_files(self, path: Path) -> set[Path]:
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
                if parts[0] != PACKAGE or len(parts) == 1:
                    continue
                candidate = self.sources.joinpath(*parts[1:])
                if candidate.with_suffix(".py").exists() or candidate.is_dir():
                    found.add(self.module_file(name))
        return found

    def with_packages(self, module: Path) -> set[Path]:
        """A module and the `__init__.py` of each package above it, which importing it runs."""
        packages = {
            parent / "__init__.py"
            for parent in module.parents
            if parent != self.sources
            and self.sources in parent.parents
            and (parent / "__init__.py").exists()
        }
        return {module} | packages

    def import_closure(self, script: Path) -> set[Path]:
        closure: set[Path] = set()
        todo = [script]
        while todo:
            for imported in self.imported_files(todo.pop()):
                for module in self.with_packages(imported) - closure:
                    closure.add(module)
                    todo.append(module)
        return closure

    def script(self, cmd: str) -> Path:
        words = shlex.split(cmd)
        if words[0] != "python" or not words[1].startswith("stages/"):
            raise ValueError(f"a stage's cmd must be `python stages/NAME.py ...`, got {cmd!r}")
        return self.root / words[1]

    def code_deps(self, cmd: str) -> list[str]:
        """The script and its import closure, as dvc.yaml lists them (relative, sorted)."""
        script = self.script(cmd)
        return [script.relative_to(self.root).as_posix()] + sorted(
            module.relative_to(self.root).as_posix() for module in self.import_closure(script)
        )


STAGE_LINE = re.compile(r"^  ([A-Za-z0-9_]+):\s*$")
CMD_LINE = re.compile(r"^    cmd: (.+)$")
CODE_DEP_LINE = re.compile(r"^      - (\S+\.py)\s*$")


def rewrite_deps(dvc_yaml: str, code: StageCode) -> str:
    """dvc.yaml's text with each stage's `.py` deps replaced by its computed code deps."""
    lines = dvc_yaml.splitlines(keepends=True)
    out: list[str] = []
    cmd = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if STAGE_LINE.match(line):
            cmd = None
        elif match := CMD_LINE.match(line):
            cmd = match.group(1)
        elif line.rstrip() == "    deps:" and cmd is not None:
            out.append(line)
            index += 1
            while index < len(lines) and CODE_DEP_LINE.match(lines[index]):
                index += 1
            out += [f"      - {path}\n" for path in code.code_deps(cmd)]
            continue
        out.append(line)
        index += 1
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml (else: check)")
    args = parser.parse_args(argv)
    path = args.root / "dvc.yaml"
    current = path.read_text()
    wanted = rewrite_deps(current, StageCode(args.root.resolve()))
    if wanted == current:
        print("dvc.yaml: every stage's code deps are up to date")
        return 0
    if args.write:
        path.write_text(wanted)
        print("dvc.yaml: code deps rewritten")
        return 0
    print("dvc.yaml: code deps differ from the stage scripts' imports; run with --write")
    return 1


if __name__ == "__main__":
    sys.exit(main())
