"""Loading and validating `params.yaml`, and switching presets.

Stages read the whole file but use (and declare to DVC) only their own keys, so a value read
here is always one that the stage's `params:` list in dvc.yaml names.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = "presets"
PARAMS_FILE = "params.yaml"
BACKUP_FILE = "params.yaml.bak"


class ParamError(ValueError):
    """A parameter is missing or holds a value the pipeline cannot use."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamError(f"{path}: no such params file (run `safetydrift preset NAME` first)")
    with path.open(encoding="utf-8") as handle:
        params = yaml.safe_load(handle)
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a YAML mapping at the top level")
    return params


def get(params: Mapping[str, Any], dotted_key: str, default: Any = ...) -> Any:
    """`get(params, "grid.seeds")`; a missing key without a default is a named error."""
    node: Any = params
    for part in dotted_key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is ...:
                raise ParamError(f"params.yaml: missing key `{dotted_key}`")
            return default
        node = node[part]
    return node


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys, as MLflow and DVC show them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def select(params: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """The sub-tree of `params` under each dotted key, flattened: what a stage declared it reads."""
    selected: dict[str, Any] = {}
    for key in keys:
        value = get(params, key)
        if isinstance(value, Mapping):
            selected.update(flatten(value, f"{key}."))
        else:
            selected[key] = value
    return selected


def available_presets(root: str | Path = ".") -> list[str]:
    return sorted(p.stem for p in (Path(root) / PRESETS_DIR).glob("*.yaml"))


def apply_preset(name: str, root: str | Path = ".", force: bool = False) -> Path:
    """Make `params.yaml` a copy of `presets/NAME.yaml` (its comments included).

    A `params.yaml` that is no preset's exact copy holds the user's edits: it is replaced only
    with `force`, and then kept as `params.yaml.bak`.
    """
    root = Path(root)
    source = root / PRESETS_DIR / f"{name}.yaml"
    if not source.exists():
        known = ", ".join(available_presets(root)) or "none"
        raise ParamError(f"unknown preset `{name}`: no {source} (known presets: {known})")
    load_params(source)  # refuse to install a preset that is not valid YAML
    target = root / PARAMS_FILE
    if target.exists() and not is_a_preset(target, root):
        backup = target.with_name(BACKUP_FILE)
        if not force:
            raise ParamError(
                f"{target} differs from every preset in {root / PRESETS_DIR} (edited?); "
                f"`safetydrift preset {name} --force` replaces it and keeps it as {backup}"
            )
        shutil.copyfile(target, backup)
    tmp = target.with_suffix(".yaml.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


def is_a_preset(path: Path, root: str | Path = ".") -> bool:
    """Whether `path` is byte for byte one of the presets (so replacing it loses nothing)."""
    content = path.read_bytes()
    return any(
        preset.read_bytes() == content for preset in (Path(root) / PRESETS_DIR).glob("*.yaml")
    )


def boolean(value: Any, key: str) -> bool:
    """A YAML boolean, or a named error: `bool("false")` would be True."""
    if not isinstance(value, bool):
        raise ParamError(
            f"params.yaml: `{key}` must be true or false (an unquoted YAML boolean), got {value!r}"
        )
    return value


def choice(
    value: Any, choices: Sequence[str], key: str, error: type[ValueError] = ParamError
) -> str:
    """`value` when it is one of `choices`, else `error` naming `key` and the choices; `error`
    keeps a module's own error type (a `DataError`, a `ModelError`) for those who catch it."""
    if value not in choices:
        raise error(f"params.yaml: `{key}` must be one of {', '.join(choices)}, got {value!r}")
    return value


def positive_float(value: Any, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParamError(f"params.yaml: `{key}` must be a number, got {value!r}") from None
    if not number > 0:
        raise ParamError(f"params.yaml: `{key}` must be > 0, got {value!r}")
    return number
