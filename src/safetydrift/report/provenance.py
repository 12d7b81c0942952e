"""What produced a report: the code's git revision and whether it was changed, the lock files
and dvc.lock's hashes, package versions, hardware, seeds and params.

Deliberately nothing from the environment: variables such as HF_TOKEN must never reach a
report that is committed and shared.
"""

from __future__ import annotations

import copy
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from safetydrift.lockfile import lock_provenance, package_versions
from safetydrift.params import get

PROVENANCE_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "dvc",
    "mlflow",
    "sacrebleu",
    "bitsandbytes",
)
# `train.seed`: the training seed of results from before `grid.seeds`.
SEED_KEYS = (
    "grid.seeds", "train.seed", "data.mtpref.seed", "study.seed", "model.seed", "chrf.seed",
)  # fmt: skip


def _git(repo_root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo_root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _dvc_lock_hashes(path: Path) -> dict[str, dict[str, dict[str, str | None]]] | None:
    if not path.exists():
        return None
    # Every scalar as a string: an unquoted hash of digits alone would otherwise load as an int.
    # libyaml's loader where PyYAML has it: the standin grid's dvc.lock (19,873 lines) loads in
    # 0.12 s, against 0.93 s in pure Python.
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    lock = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        raise ValueError(f"{path}: expected a `stages` mapping")
    hashes: dict[str, dict[str, dict[str, str | None]]] = {}
    for stage, entry in stages.items():
        entry = entry or {}
        hashes[stage] = {
            kind: {str(item["path"]): item.get("md5") for item in entry.get(kind) or []}
            for kind in ("deps", "outs")
        }
    return hashes


def _hardware() -> dict[str, Any]:
    hardware: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    # Importing torch only to name the GPU would cost seconds; a stage that used the GPU has it.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        hardware["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hardware


# Files DVC itself writes while it runs the pipeline (its lock, and the .gitignore files naming
# its outputs; `core.autostage` even stages them): not changes to the study's code or params.
DVC_BOOKKEEPING = re.compile(r"(^|/)(dvc\.lock|\.gitignore)$")


def code_changes(porcelain: str) -> list[str]:
    """Paths of `git status --porcelain` that differ from the commit, DVC's bookkeeping aside."""
    paths = [line[3:].split(" -> ")[-1] for line in porcelain.splitlines() if line.strip()]
    return [path for path in paths if not DVC_BOOKKEEPING.search(path)]


def collect_provenance(repo_root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """What produced this report: code revision, input hashes, packages, hardware, seeds, params.

    Deliberately nothing from the environment: variables such as HF_TOKEN must never reach a
    report that is committed and shared.
    """
    repo_root = Path(repo_root)
    revision = _git(repo_root, "rev-parse", "--verify", "--quiet", "HEAD")
    status = _git(repo_root, "status", "--porcelain", "--untracked-files=no") if revision else None
    changed = None if status is None else code_changes(status)
    return {
        "git": {"revision": revision, "dirty": None if changed is None else bool(changed)},
        "lock_files": lock_provenance(repo_root),
        "dvc_lock": _dvc_lock_hashes(repo_root / "dvc.lock"),
        "packages": package_versions(PROVENANCE_PACKAGES),
        "hardware": _hardware(),
        "seeds": {key: value for key in SEED_KEYS if (value := get(params, key, None)) is not None},
        # Run-time settings cannot change a result, and no stage declares them.
        "params": {k: copy.deepcopy(v) for k, v in params.items() if k != "runtime"},
    }
