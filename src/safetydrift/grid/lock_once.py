"""`dvc repro` that writes dvc.lock once, when it ends, rather than after every stage.

The grid restores each finished cell into the main workspace with `dvc repro` from the run-cache
(safetydrift.grid.workspaces.restore_cell). Nothing runs, but DVC still rewrites the whole
dvc.lock after each stage, and the lock grows with every cell restored: at 14 cells of the
`standin` grid it had 16,043 lines, which DVC's round-trip YAML loads in 1.6 s and writes in
0.9 s, eight times per cell; the restores grew from 8 s to 46 s and, one at a time, set the end of
the grid (reports/h200-2026-12-03-grid3/).

Here the lock entries of the stages DVC reproduced are held and written together by DVC's own
`dump_stages`, still inside DVC's repository lock, when its reproduction loop returns or fails
(the stages done by then are written, as DVC would have). Everything else is DVC's: which stages
run, restore or skip, the run-cache, the checkout, the output it prints. DVC decides each stage
from the stage objects it collected at the start, not by reading dvc.lock again, so holding the
writes changes none of its decisions. Two of DVC's internal names are replaced for the duration of
the command; both are checked when it starts, so a DVC release that renames them fails with that
message instead of writing per stage unnoticed.

    python -m safetydrift.grid.lock_once repro [DVC REPRO ARGS]
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def lock_written_once() -> Iterator[None]:
    """Hold DVC's per-stage lock-file writes; write them together on leaving."""
    import dvc
    import dvc.repo.reproduce as dvc_reproduce
    from dvc.dvcfile import ProjectFile

    for owner, name in ((ProjectFile, "dump_stages"), (dvc_reproduce, "_reproduce")):
        if not callable(getattr(owner, name, None)):
            raise RuntimeError(
                f"dvc {dvc.__version__} has no {owner.__name__}.{name}: "
                "safetydrift.grid.lock_once needs updating for it"
            )
    dump_stages = ProjectFile.dump_stages
    reproduce_stages = dvc_reproduce._reproduce
    held: dict[str, tuple[Any, list[Any]]] = {}

    def hold(self, stages, update_pipeline=True, update_lock=True, **kwargs):
        if update_pipeline or not update_lock or kwargs:
            # Not the lock-only write a reproduced stage makes: as DVC does it.
            return dump_stages(self, stages, update_pipeline, update_lock, **kwargs)
        held.setdefault(self.path, (self, []))[1].extend(stages)

    def reproduce_then_write(*args, **kwargs):
        try:
            return reproduce_stages(*args, **kwargs)
        finally:
            for dvcfile, stages in held.values():
                dump_stages(dvcfile, stages, update_pipeline=False)
            held.clear()

    ProjectFile.dump_stages = hold
    dvc_reproduce._reproduce = reproduce_then_write
    try:
        yield
    finally:
        ProjectFile.dump_stages = dump_stages
        dvc_reproduce._reproduce = reproduce_stages


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) != ["repro"]:
        raise SystemExit("usage: python -m safetydrift.grid.lock_once repro [DVC REPRO ARGS]")
    from dvc.cli import main as dvc_main

    with lock_written_once():
        return dvc_main(list(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
