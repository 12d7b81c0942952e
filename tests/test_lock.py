"""The lock files pin every dependency pyproject.toml names, and this environment is the lock."""

from __future__ import annotations

import pytest
import tomllib
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from safetydrift.lockfile import lock_files, lock_mismatches, lock_provenance, read_pins

LOCKS = {lock.name: lock for lock in lock_files(ROOT)}
# The extras a set-up installs; `vllm` is optional and not locked (docs/install.md).
LOCKED_EXTRAS = ("dev", "gpu")


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        declared += project["optional-dependencies"][extra]
    return [Requirement(text) for text in declared]


def test_both_builds_are_locked():
    assert set(LOCKS) == {"lock-cpu.txt", "lock-cuda.txt"}
    assert read_pins(LOCKS["lock-cpu.txt"])["torch"].endswith("+cpu")
    cuda = read_pins(LOCKS["lock-cuda.txt"])
    assert "+" not in cuda["torch"] and any(name.startswith("nvidia-") for name in cuda)


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_satisfies_pyproject(lock):
    text = LOCKS[lock].read_text()
    pins = read_pins(LOCKS[lock])
    for extra in LOCKED_EXTRAS:
        assert f"--extra={extra}" in text, f"{lock} was compiled without the `{extra}` extra"
    unmet = [
        f"{req} (lock: {pins.get(canonicalize_name(req.name), 'absent')})"
        for req in declared_requirements()
        if canonicalize_name(req.name) not in pins
        or not req.specifier.contains(Version(pins[canonicalize_name(req.name)]), prereleases=True)
    ]
    assert not unmet, f"{lock} disagrees with pyproject.toml: {unmet}; run scripts/lock.sh"
    # Every pin carries a hash, so `pip install --require-hashes` accepts the file.
    lines = text.splitlines()
    unhashed = [
        line.split(" ")[0]
        for line, following in zip(lines, lines[1:] + [""], strict=True)
        if "==" in line and not line.startswith((" ", "#")) and "--hash=sha256:" not in following
    ]
    assert not unhashed, f"{lock}: no hash for {unhashed}"


def test_this_environment_is_the_cpu_lock():
    # CI installs requirements/lock-cpu.txt into a fresh venv; a drifted environment is named.
    assert lock_mismatches(LOCKS["lock-cpu.txt"]) == []
    assert lock_provenance(ROOT)["environment_matches"] == "lock-cpu.txt"


def test_mismatches_are_named(tmp_path):
    lock = tmp_path / "lock-test.txt"
    lock.write_text(
        "numpy==2.0.0 \\\n    --hash=sha256:00\nrich==13.0.0 \\\n    --hash=sha256:11\n"
    )
    problems = lock_mismatches(lock, {"numpy": "2.1.0", "tqdm": "4.0.0", "safetydrift": "0.1.0"})
    assert problems == [
        "numpy: 2.1.0 installed (lock: 2.0.0)",
        "rich: not installed (lock: 13.0.0)",
        "tqdm: installed but not in the lock",
    ]
    empty = tmp_path / "lock-empty.txt"
    empty.write_text("# nothing pinned\n")
    with pytest.raises(ValueError, match="lock-empty.txt: no `name==version` lines"):
        read_pins(empty)
