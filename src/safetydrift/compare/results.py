"""One results folder read: its refusal and chrF metrics, and the per-prompt verdicts and
translations behind them where present, checked against each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.files import read_json, read_jsonl
from safetydrift.judges import canonical_judge_name
from safetydrift.stats.comparison import CHRF, REFUSAL


@dataclass
class RefusalEntry:
    """One judge's refusals of one cell at one checkpoint, with per-prompt verdicts if present."""

    source: str
    refusals: int
    n: int
    verdicts: dict[Any, bool] | None = None

    @property
    def rate(self) -> float:
        return self.refusals / self.n


@dataclass
class ChrfEntry:
    """chrF of one cell at one checkpoint, with per-sentence (translation, reference) if present."""

    source: str
    chrf: float | None
    rows: dict[Any, tuple[str, str]] | None = None


@dataclass
class Results:
    """Everything one results folder holds, keyed by (cell, checkpoint[, judge])."""

    root: Path
    refusal: dict[tuple[str, str, str], RefusalEntry] = field(default_factory=dict)
    chrf: dict[tuple[str, str], ChrfEntry] = field(default_factory=dict)


def _prompt_id(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: `id` must be a number or text, got {value!r}")
    return value


def _read_metrics(root: Path, measurement: str) -> dict[str, tuple[Path, dict[str, Any]]]:
    directory = root / "metrics" / measurement
    found = {}
    for path in sorted(directory.glob("*.json")):
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
            raise ValueError(f"{path}: expected an object with a `checkpoints` object")
        found[path.stem] = (path, data)
    return found


def _read_verdicts(path: Path) -> dict[tuple[str, str], dict[Any, bool]]:
    """{(checkpoint, judge): {id: refused}} from an `evals/refusal/CELL.jsonl` file."""
    verdicts: dict[tuple[str, str], dict[Any, bool]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        where = f"{path}, row {number}"
        checkpoint = row.get("checkpoint")
        if not isinstance(checkpoint, str):
            raise ValueError(f"{where}: `checkpoint` is missing or not text")
        if "id" not in row:
            raise ValueError(f"{where}: `id` is missing")
        prompt_id = _prompt_id(row["id"], where)
        for judge, verdict in row.items():
            if judge in ("checkpoint", "id"):
                continue
            refused = verdict.get("refusal") if isinstance(verdict, dict) else None
            if not isinstance(refused, bool):
                raise ValueError(f"{where}: `{judge}.refusal` is missing or not true/false")
            by_id = verdicts.setdefault((checkpoint, judge), {})
            if prompt_id in by_id:
                raise ValueError(f"{where}: prompt id {prompt_id!r} appears twice at {checkpoint}")
            by_id[prompt_id] = refused
    return verdicts


def _read_translations(path: Path) -> dict[Any, tuple[str, str]]:
    rows: dict[Any, tuple[str, str]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        where = f"{path}, row {number}"
        if "id" not in row:
            raise ValueError(f"{where}: `id` is missing")
        prompt_id = _prompt_id(row["id"], where)
        for column in ("response", "reference"):
            if not isinstance(row.get(column), str):
                raise ValueError(f"{where}: `{column}` is missing or not text")
        if prompt_id in rows:
            raise ValueError(f"{where}: sentence id {prompt_id!r} appears twice")
        rows[prompt_id] = (row["response"], row["reference"])
    return rows


def read_results(root: str | Path) -> Results:
    """Every refusal and chrF measurement of a results folder, per-prompt files where present.

    Where both a metrics file and per-prompt verdicts exist they must agree (the same count of
    refusals of the same number of prompts), or the folder mixes results of different runs.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such results folder")
    results = Results(root)
    for cell, (path, data) in _read_metrics(root, REFUSAL).items():
        for checkpoint, entry in data["checkpoints"].items():
            for name, summary in (entry.get("judges") or {}).items():
                # Results written under a judge's earlier name compare with today's.
                judge = canonical_judge_name(name)
                refusals, n = summary.get("refusals"), summary.get("n")
                if not isinstance(refusals, int) or not isinstance(n, int) or n < 1:
                    raise ValueError(
                        f"{path}: {checkpoint} {judge} needs whole-number `refusals` and `n` >= 1"
                    )
                results.refusal[(cell, checkpoint, judge)] = RefusalEntry(str(path), refusals, n)
    for path in sorted((root / "evals" / REFUSAL).glob("*.jsonl")):
        cell = path.stem
        for (checkpoint, name), verdicts in _read_verdicts(path).items():
            judge = canonical_judge_name(name)
            key = (cell, checkpoint, judge)
            refusals = sum(verdicts.values())
            known = results.refusal.get(key)
            if known is not None and (known.refusals, known.n) != (refusals, len(verdicts)):
                raise ValueError(
                    f"{known.source} says {known.refusals}/{known.n} refusals for {checkpoint} "
                    f"{judge}, but {path} has {refusals}/{len(verdicts)}: the two files come "
                    "from different runs (rerun eval_refusal for this cell)"
                )
            results.refusal[key] = RefusalEntry(str(path), refusals, len(verdicts), verdicts)
    for cell, (path, data) in _read_metrics(root, CHRF).items():
        for checkpoint, entry in data["checkpoints"].items():
            value = entry.get("chrf")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{path}: {checkpoint} has no numeric `chrf`")
            results.chrf[(cell, checkpoint)] = ChrfEntry(str(path), float(value))
    for path in sorted((root / "generations" / CHRF).glob("*/ckpt-*.jsonl")):
        key = (path.parent.name, path.stem)
        known = results.chrf.get(key)
        results.chrf[key] = ChrfEntry(str(path), known.chrf if known else None)
        results.chrf[key].rows = _read_translations(path)
    return results
