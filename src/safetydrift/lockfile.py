"""The project's lock files (requirements/lock-*.txt, pip-tools with hashes): what they pin, and
whether this environment is what they pin.

A report records the hash of each lock file and which one the running environment matches, so a
figure can be traced to the exact packages that computed it (docs/install.md).
"""

from __future__ import annotations

import hashlib
import re
import sysconfig
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK_DIR = Path("requirements")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
# Installed by the set-up itself, not by the lock: the project (editable) and the venv's tools.
NOT_LOCKED = {"safetydrift"}


def lock_files(root: Path) -> list[Path]:
    return sorted((Path(root) / LOCK_DIR).glob("lock-*.txt"))


def read_pins(lock: Path) -> dict[str, str]:
    """`{canonical name: version}` of every `name==version` line of a pip-tools lock file."""
    pins = {}
    for line in Path(lock).read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    if not pins:
        raise ValueError(f"{lock}: no `name==version` lines; is it a pip-compile lock file?")
    return pins


def installed_versions() -> dict[str, str]:
    """What this environment's own site-packages hold (not whatever else is on `sys.path`)."""
    paths = sysconfig.get_paths()
    folders = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    return {canonicalize_name(d.metadata["Name"]): d.version for d in distributions(path=folders)}


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Each named distribution's installed version; None where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def lock_mismatches(lock: Path, installed: dict[str, str] | None = None) -> list[str]:
    """How this environment differs from `lock`: wrong versions, missing or unlocked packages."""
    pins = read_pins(lock)
    installed = installed_versions() if installed is None else installed
    problems = []
    for name, pinned in sorted(pins.items()):
        have = installed.get(name)
        if have is None:
            problems.append(f"{name}: not installed (lock: {pinned})")
        elif Version(have) != Version(pinned):
            problems.append(f"{name}: {have} installed (lock: {pinned})")
    for name in sorted(set(installed) - set(pins) - NOT_LOCKED):
        problems.append(f"{name}: installed but not in the lock")
    return problems


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lock_provenance(root: Path) -> dict[str, object]:
    """Each lock file's sha256 and the one this environment matches exactly (or none)."""
    locks = lock_files(root)
    matching = [lock.name for lock in locks if not lock_mismatches(lock)]
    return {
        "files": {lock.relative_to(root).as_posix(): sha256(lock) for lock in locks},
        "environment_matches": matching[0] if matching else None,
    }
