"""A side of a comparison given as a git revision: its results written to a temporary folder
(git-tracked files by `git archive`, DVC outputs through DVC), and `compare_paths`, which takes
folders or revisions."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from safetydrift.compare.pairing import ComparisonReport, Settings, compare_results, seed_cells
from safetydrift.compare.results import read_results
from safetydrift.params import PARAMS_FILE

log = logging.getLogger(__name__)

# What a comparison reads from a revision; generations/chrf is optional (chrF tests only).
RESULT_PATHS = ("metrics", "evals", "generations/chrf")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=False)


def resolve_revision(spec: str, repo: str | Path = ".") -> str | None:
    """The commit `spec` names in `repo`, or None when it names none (or `repo` is no git repo)."""
    try:
        done = _git(Path(repo), "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    except FileNotFoundError:
        return None
    return done.stdout.decode().strip() if done.returncode == 0 else None


def materialise_revision(repo: str | Path, commit: str, destination: str | Path) -> list[str]:
    """Write `metrics/`, `evals/`, `generations/chrf/` and params.yaml as of `commit` under
    `destination`.

    Git-tracked files (metrics/, `cache: false`) come from `git archive`; DVC outputs (evals/,
    generations/) from DVC's view of that revision, which reads the local cache (or the remote).
    Returns notes on what could not be had, e.g. DVC outputs never pushed nor cached here.
    """
    repo, destination = Path(repo), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    # params.yaml too: the `train.seed` of results from before the seed axis (`seed_cells`).
    listed = _git(repo, "ls-tree", "-r", "--name-only", commit, "--", *RESULT_PATHS, PARAMS_FILE)
    tracked = [name for name in listed.stdout.decode().splitlines() if name]
    if tracked:
        archive = destination / ".revision.tar"
        done = _git(repo, "archive", "--format=tar", "-o", str(archive), commit, "--", *tracked)
        if done.returncode != 0:
            raise RuntimeError(f"git archive {commit} failed: {done.stderr.decode().strip()}")
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")
        archive.unlink()
    if _git(repo, "cat-file", "-e", f"{commit}:.dvc").returncode != 0:
        return notes
    # Imported here: dvc.api takes ~0.2 s to import (measured), and only a revision with DVC
    # outputs needs it, not a comparison of two folders.
    from dvc.api import DVCFileSystem

    filesystem = DVCFileSystem(str(repo), rev=commit)
    for path in RESULT_PATHS[1:]:
        if any(name.startswith(f"{path}/") for name in tracked) or not filesystem.exists(path):
            continue
        try:
            filesystem.get(path, str(destination / path), recursive=True)
        except Exception as error:  # noqa: BLE001 - DVC raises many kinds; all mean "not here"
            notes.append(
                f"{path} at {commit[:10]}: not in the DVC cache or remote here "
                f"({type(error).__name__}: {error}); `dvc fetch --rev {commit[:10]}` first"
            )
            log.warning(notes[-1])
    return notes


@contextlib.contextmanager
def results_folder(spec: str, repo: str | Path = ".") -> Iterator[tuple[Path, list[str]]]:
    """A folder given as is, or a git revision's results in a temporary folder, with notes."""
    path = Path(spec)
    if path.is_dir():
        yield path, []
        return
    commit = resolve_revision(spec, repo)
    if commit is None:
        raise FileNotFoundError(f"{spec}: neither a folder nor a git revision of {Path(repo)}")
    with tempfile.TemporaryDirectory(prefix="safetydrift-compare-") as tmp:
        notes = materialise_revision(repo, commit, tmp)
        yield Path(tmp), notes


def compare_paths(
    spec_a: str,
    spec_b: str,
    settings: Settings | None = None,
    judges: Sequence[str] | None = None,
    repo: str | Path = ".",
) -> ComparisonReport:
    """`compare_metrics` for folders or git revisions (of `repo`), labelled as given."""
    with (
        results_folder(spec_a, repo) as (dir_a, notes_a),
        results_folder(spec_b, repo) as (
            dir_b,
            notes_b,
        ),
    ):
        results_a, results_b = read_results(dir_a), read_results(dir_b)
        named = seed_cells(results_a, results_b, spec_a) + seed_cells(results_b, results_a, spec_b)
        report = compare_results(results_a, results_b, settings, judges, labels=(spec_a, spec_b))
    report.notes = notes_a + notes_b + named + report.notes
    return report
