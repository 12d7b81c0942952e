"""The report's results: every metric file the evaluation stages wrote, read into one grid.

A cell or checkpoint without metrics is kept as missing, never as zero, so a report drawn while
the grid is still running cannot be mistaken for a finished one. Also the report's settings
(`report.*`, `train.checkpoint_fractions`) and Figure 2's series, which the figures and the DVC
plot files share.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, Cell, checkpoint_label, study_cells
from safetydrift.files import read_json
from safetydrift.params import ParamError, get

DEFAULT_FIXED_LR = 5e-5
DEFAULT_PRIMARY_JUDGE = "keywords-kempermann2025"
DEFAULT_CHECKPOINT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
BASE_CHECKPOINT = checkpoint_label(0.0)

REFUSAL = "refusal"
CHRF = "chrf"
METRICS = (REFUSAL, CHRF)
MISSING = "missing"


@dataclass(frozen=True)
class Estimate:
    """A measured value with its interval; the interval is None where the file gave none."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


def csv_number(value: float | int | None) -> str:
    """A number as the report's CSV files hold it: exact (its repr), empty where there is none."""
    return "" if value is None else repr(value)


@dataclass
class CheckpointResult:
    """One row of the results: a cell at one checkpoint, with whatever metrics exist for it."""

    cell: str
    method: str
    learning_rate: float | None
    checkpoint: str
    fraction: float
    step: int | None = None
    refusal: dict[str, Estimate] = field(default_factory=dict)
    chrf: Estimate | None = None

    def missing_metrics(self, primary_judge: str) -> list[str]:
        missing = []
        if primary_judge not in self.refusal:
            missing.append(REFUSAL)
        if self.chrf is None:
            missing.append(CHRF)
        return missing


@dataclass(frozen=True)
class Missing:
    """Metrics of one cell that do not exist (yet): a whole file, or some of its checkpoints."""

    cell: str
    metric: str
    checkpoints: tuple[str, ...]
    file_missing: bool

    def describe(self) -> str:
        name = "refusal rate" if self.metric == REFUSAL else "chrF"
        if self.file_missing:
            return f"{name}: no metrics file yet"
        return f"{name}: {', '.join(self.checkpoints)}"


@dataclass
class GridResults:
    """The base model and every grid cell, each with its rows in checkpoint order."""

    primary_judge: str
    judges: list[str]
    cells: list[Cell]
    rows: dict[str, list[CheckpointResult]]
    missing: list[Missing]
    final_checkpoint: str

    @property
    def base(self) -> CheckpointResult:
        base = self.row(BASE_CELL, BASE_CHECKPOINT)
        assert base is not None, "collect_results always adds the base model's row"
        return base

    def all_rows(self) -> list[CheckpointResult]:
        return [
            row for name in [BASE_CELL, *(c.name for c in self.cells)] for row in self.rows[name]
        ]

    def row(self, cell: str, checkpoint: str) -> CheckpointResult | None:
        return next((r for r in self.rows.get(cell, []) if r.checkpoint == checkpoint), None)

    @property
    def missing_cells(self) -> list[str]:
        return list(dict.fromkeys(m.cell for m in self.missing))


def _estimate(entry: Mapping[str, Any], value_key: str) -> Estimate | None:
    value = entry.get(value_key)
    if value is None:
        return None
    n = entry.get("n")
    return Estimate(
        value=float(value),
        ci_low=None if entry.get("ci_low") is None else float(entry["ci_low"]),
        ci_high=None if entry.get("ci_high") is None else float(entry["ci_high"]),
        n=None if n is None else int(n),
    )


def _read_metric_file(metrics_dir: Path, metric: str, cell: str) -> dict[str, Any] | None:
    path = metrics_dir / metric / f"{cell}.json"
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
        raise ValueError(f"{path}: expected an object with a `checkpoints` object")
    # A renamed or copied file would put one cell's numbers under another's name.
    if data.get("cell") not in (None, cell):
        raise ValueError(f"{path}: holds metrics of cell `{data['cell']}`, not `{cell}`")
    return data


def _fraction(label: str, entry: Mapping[str, Any]) -> float:
    if entry.get("fraction") is not None:
        return float(entry["fraction"])
    match = re.fullmatch(r"ckpt-(\d+)", label)
    if match is None:
        raise ValueError(f"checkpoint `{label}` has no `fraction` and is not named ckpt-NNN")
    return int(match.group(1)) / 100


def checkpoint_fractions(params: Mapping[str, Any]) -> list[float]:
    fractions = get(params, "train.checkpoint_fractions", None) or DEFAULT_CHECKPOINT_FRACTIONS
    return sorted(float(f) for f in fractions)


def fixed_learning_rate(params: Mapping[str, Any]) -> float:
    """`report.fixed_lr`: the learning rate at which Figure 1 compares the methods."""
    return float(get(params, "report.fixed_lr", None) or DEFAULT_FIXED_LR)


def _cell_rows(
    cell: str,
    method: str,
    learning_rate: float | None,
    expected: Mapping[str, float],
    refusal_file: dict[str, Any] | None,
    chrf_file: dict[str, Any] | None,
) -> list[CheckpointResult]:
    labels = dict(expected)
    for data in (refusal_file, chrf_file):
        for label, entry in (data or {}).get("checkpoints", {}).items():
            labels.setdefault(label, _fraction(label, entry))
    rows = []
    for label, fraction in sorted(labels.items(), key=lambda item: (item[1], item[0])):
        row = CheckpointResult(cell, method, learning_rate, label, fraction)
        refusal_entry = (refusal_file or {}).get("checkpoints", {}).get(label)
        chrf_entry = (chrf_file or {}).get("checkpoints", {}).get(label)
        for entry in (refusal_entry, chrf_entry):
            if entry and row.step is None and entry.get("step") is not None:
                row.step = int(entry["step"])
        if refusal_entry:
            for judge, judged in (refusal_entry.get("judges") or {}).items():
                estimate = _estimate(judged, "refusal_rate")
                if estimate is not None:
                    row.refusal[judge] = estimate
        if chrf_entry:
            row.chrf = _estimate(chrf_entry, "chrf")
        rows.append(row)
    return rows


def _missing_entries(
    cell: str,
    rows: list[CheckpointResult],
    files: Mapping[str, dict[str, Any] | None],
    primary_judge: str,
) -> list[Missing]:
    entries = []
    for metric in METRICS:
        absent = tuple(r.checkpoint for r in rows if metric in r.missing_metrics(primary_judge))
        if absent:
            entries.append(Missing(cell, metric, absent, file_missing=files[metric] is None))
    return entries


def collect_results(params: Mapping[str, Any], metrics_dir: Path) -> GridResults:
    """Read every metric file the grid in `params` should have; absent ones become `missing`."""
    metrics_dir = Path(metrics_dir)
    primary_judge = str(get(params, "report.primary_judge", None) or DEFAULT_PRIMARY_JUDGE)
    fractions = checkpoint_fractions(params)
    expected = {checkpoint_label(f): f for f in fractions}
    cells = study_cells(params, before_seed_axis=True)

    rows: dict[str, list[CheckpointResult]] = {}
    missing: list[Missing] = []
    judges: set[str] = set()
    for name, method, lr, checkpoints in [
        (BASE_CELL, BASE_CELL, None, {BASE_CHECKPOINT: 0.0}),
        *((c.name, c.method, c.learning_rate, expected) for c in cells),
    ]:
        files = {metric: _read_metric_file(metrics_dir, metric, name) for metric in METRICS}
        cell_rows = _cell_rows(name, method, lr, checkpoints, files[REFUSAL], files[CHRF])
        rows[name] = cell_rows
        missing.extend(_missing_entries(name, cell_rows, files, primary_judge))
        for row in cell_rows:
            judges.update(row.refusal)

    return GridResults(
        primary_judge=primary_judge,
        judges=[primary_judge, *sorted(judges - {primary_judge})],
        cells=cells,
        rows=rows,
        missing=missing,
        final_checkpoint=checkpoint_label(fractions[-1]),
    )


def check_primary_judge(results: GridResults, metrics_dir: Path) -> None:
    """`report.primary_judge` must be a judge that the metrics hold: otherwise every refusal
    figure and table would be empty, in a report that looks complete."""
    rows = [row for cell_rows in results.rows.values() for row in cell_rows]
    judged = sorted({judge for row in rows for judge in row.refusal})
    if judged and results.primary_judge not in judged:
        raise ParamError(
            f"params.yaml: `report.primary_judge` is {results.primary_judge!r}, but no refusal "
            f"metrics under {metrics_dir} hold it (judges there: {', '.join(judged)}); set it to "
            "one of `refusal.judges`"
        )


@dataclass(frozen=True)
class CurvePoint:
    percent: float
    checkpoint: str
    step: int | None
    estimate: Estimate


def lr_curves(
    results: GridResults, metric: str
) -> dict[str, dict[float, dict[int | None, list[CurvePoint]]]]:
    """Figure 2's series: per method, learning rate and seed, the measured points from 0% to 100%.

    The base model is the 0% point of every curve. Checkpoints without the metric are left out,
    and a seed with nothing measured after the base gets no curve at all.
    """

    def estimate(row: CheckpointResult) -> Estimate | None:
        return row.refusal.get(results.primary_judge) if metric == REFUSAL else row.chrf

    def point(row: CheckpointResult, value: Estimate) -> CurvePoint:
        return CurvePoint(100 * row.fraction, row.checkpoint, row.step, value)

    base_value = estimate(results.base)
    start = [] if base_value is None else [point(results.base, base_value)]
    curves: dict[str, dict[float, dict[int | None, list[CurvePoint]]]] = {}
    for cell in results.cells:
        points = [
            point(row, value)
            for row in results.rows[cell.name]
            if (value := estimate(row)) is not None
        ]
        by_lr = curves.setdefault(cell.method, {})
        if points:
            by_lr.setdefault(cell.learning_rate, {})[cell.seed] = start + points
    return curves
