"""`safetydrift restore`: put back the uncached outputs that a failed `dvc repro` deleted.

DVC deletes a stage's outputs before it runs the stage. For outputs in its cache that is harmless
(`dvc checkout` brings back what `dvc.lock` records), but `cache: false` outputs (the metrics
under `metrics/`, `data/mtpref/stats.json`) are not checked out, so a rerun that fails leaves
them missing while `dvc.lock`, which a failed stage never updates, still records them. DVC's
run-cache did store each of them in the cache under the hash the lock records: this copies
exactly that version back, so the workspace again matches `dvc.lock` and nothing computed
earlier is lost. A file that exists is never touched, whatever it holds.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Restored:
    path: Path
    stage: str


@dataclass(frozen=True)
class Unrestorable:
    path: Path
    stage: str
    reason: str


def restore_uncached_outputs(root: Path | str = ".") -> tuple[list[Restored], list[Unrestorable]]:
    """Copy every missing `cache: false` output that `dvc.lock` records back from DVC's cache."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    restored: list[Restored] = []
    unrestorable: list[Unrestorable] = []
    with Repo(str(root)) as repo:
        cache = repo.cache.local
        for stage in repo.index.stages:
            for out in stage.outs:
                if out.use_cache or not out.hash_info or not out.hash_info.value:
                    continue
                path = Path(out.fs_path)
                if path.exists():
                    continue
                relative = path.relative_to(root)
                if out.hash_info.isdir:
                    # Uncached directories are not in the run-cache as one object.
                    unrestorable.append(Unrestorable(relative, stage.addressing, "a directory"))
                    continue
                cached = Path(cache.oid_to_path(out.hash_info.value))
                if not cached.is_file():
                    unrestorable.append(
                        Unrestorable(relative, stage.addressing, f"not in the DVC cache ({cached})")
                    )
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.name}.restoring")
                shutil.copyfile(cached, partial)
                # Cache objects are read-only; the restored file is an ordinary workspace file.
                os.chmod(partial, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
                os.replace(partial, path)
                restored.append(Restored(relative, stage.addressing))
    return restored, unrestorable


def report_restored(restored: list[Restored], unrestorable: list[Unrestorable]) -> str:
    lines = [f"restored {r.path} (stage {r.stage}) as dvc.lock records it" for r in restored]
    lines += [f"could not restore {u.path} (stage {u.stage}): {u.reason}" for u in unrestorable]
    return "\n".join(lines)
