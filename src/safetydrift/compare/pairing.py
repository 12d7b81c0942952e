"""Side B against side A: their cells, checkpoints and judges paired (cells from before the
seed axis named by their seed), each pair tested, Holm's adjustment over each metric's family,
and what one side lacks listed as missing."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, Cell, cell_name, checkpoint_label, parse_cell, seed_value
from safetydrift.compare.results import ChrfEntry, RefusalEntry, Results, read_results
from safetydrift.params import PARAMS_FILE, get, load_params
from safetydrift.stats.comparison import (
    CHRF,
    REFUSAL,
    Comparison,
    adjust_family,
    compare_chrf,
    compare_refusals,
)

BASE_CHECKPOINT = checkpoint_label(0.0)
NO_BASE = f"no {BASE_CELL} {BASE_CHECKPOINT} result to compare with"


@dataclass(frozen=True)
class Settings:
    """How comparisons are tested: margins in rate (refusal) and chrF points, and levels."""

    margin: float = 0.05
    chrf_margin: float = 1.0
    alpha: float = 0.05
    confidence: float = 0.95
    n_resamples: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class Missing:
    """A measurement that cannot be compared, and why (e.g. "only in A")."""

    measurement: str
    cell: str
    checkpoint: str
    judge: str | None
    reason: str

    def describe(self) -> str:
        what = " ".join(part for part in (self.cell, self.checkpoint, self.judge) if part)
        return f"{self.measurement} {what}: {self.reason}"


@dataclass
class ComparisonReport:
    """Side B against side A: the tested comparisons, what is missing, and notes."""

    label_a: str
    label_b: str
    settings: Settings
    comparisons: list[Comparison]
    missing: list[Missing]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.label_a,
            "b": self.label_b,
            "settings": vars(self.settings),
            "holm_families": [
                "refusal: every tested (cell, checkpoint, judge) shown",
                "chrf: every tested (cell, checkpoint) shown",
            ],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "missing": [vars(m) for m in self.missing],
            "notes": self.notes,
        }


def _cell_order(cell: str) -> tuple[Any, ...]:
    if cell == BASE_CELL:
        return (0, "", 0.0, -1)
    try:
        parsed = parse_cell(cell)
    except ValueError:
        return (1, cell.partition("-")[0], math.inf, -1, cell)
    return (1, parsed.method, -parsed.learning_rate, -1 if parsed.seed is None else parsed.seed)


def _first_ids(ids: set[Any], count: int = 3) -> list[Any]:
    return sorted(ids, key=lambda i: (isinstance(i, str), i))[:count]


def _matched_ids(ids_a: Iterable[Any], ids_b: Iterable[Any], where: str) -> list[Any]:
    ids_a, ids_b = list(ids_a), list(ids_b)
    only_a = set(ids_a) - set(ids_b)
    only_b = set(ids_b) - set(ids_a)
    if only_a or only_b:
        examples = [repr(i) for i in _first_ids(only_a) + _first_ids(only_b)]
        raise ValueError(
            f"{where}: the two sides have different prompt ids ({len(only_a)} only in A, "
            f"{len(only_b)} only in B, e.g. {', '.join(examples)}): a paired test needs the "
            "same prompts on both sides"
        )
    return ids_a


def _untested(
    measurement: str,
    cell: str,
    checkpoint: str,
    judge: str | None,
    value_a: float,
    value_b: float,
    margin: float,
    settings: Settings,
) -> Comparison:
    """The two values and their difference, untested: a side without per-row results (a
    metrics file of an older layout) cannot be paired."""
    return Comparison(
        measurement=measurement,
        cell=cell,
        checkpoint=checkpoint,
        judge=judge,
        value_a=value_a,
        value_b=value_b,
        difference=value_b - value_a,
        margin=margin,
        alpha=settings.alpha,
    )


def _compare_refusal(
    key: tuple[str, str, str], a: RefusalEntry, b: RefusalEntry, settings: Settings
) -> Comparison:
    cell, checkpoint, judge = key
    if a.verdicts is None or b.verdicts is None:
        return _untested(
            REFUSAL, cell, checkpoint, judge, a.rate, b.rate, settings.margin, settings
        )
    ids = _matched_ids(a.verdicts, b.verdicts, f"refusal {cell} {checkpoint} {judge}")
    return compare_refusals(
        [a.verdicts[i] for i in ids],
        [b.verdicts[i] for i in ids],
        cell=cell,
        checkpoint=checkpoint,
        judge=judge,
        margin=settings.margin,
        alpha=settings.alpha,
        confidence=settings.confidence,
    )


def _compare_chrf(
    key: tuple[str, str], a: ChrfEntry, b: ChrfEntry, settings: Settings
) -> Comparison | None:
    cell, checkpoint = key
    if a.rows is None or b.rows is None:
        if a.chrf is None or b.chrf is None:
            return None
        return _untested(
            CHRF, cell, checkpoint, None, a.chrf, b.chrf, settings.chrf_margin, settings
        )
    where = f"chrf {cell} {checkpoint}"
    ids = _matched_ids(a.rows, b.rows, where)
    differing = [i for i in ids if a.rows[i][1] != b.rows[i][1]]
    if differing:
        raise ValueError(
            f"{where}: {len(differing)} sentence(s) have different references on the two sides "
            f"(e.g. id {differing[0]!r}): they were translated against different test sets"
        )
    comparison = compare_chrf(
        [a.rows[i][0] for i in ids],
        [b.rows[i][0] for i in ids],
        [a.rows[i][1] for i in ids],
        cell=cell,
        checkpoint=checkpoint,
        margin=settings.chrf_margin,
        alpha=settings.alpha,
        confidence=settings.confidence,
        n_resamples=settings.n_resamples,
        seed=settings.seed,
    )
    for side, entry, value in (("A", a, comparison.value_a), ("B", b, comparison.value_b)):
        if entry.chrf is not None and not math.isclose(entry.chrf, value, abs_tol=1e-6):
            raise ValueError(
                f"{where}: side {side}'s metrics say chrF {entry.chrf} but its translations "
                f"({entry.source}) score {value}: the files come from different runs"
            )
    return comparison


def _pairs(
    keys_a: Iterable[Any], keys_b: Iterable[Any], judges: Sequence[str] | None
) -> tuple[list[Any], list[tuple[Any, str]]]:
    """Keys on both sides in report order, and keys only on one side with that side's name."""
    keys_a, keys_b = set(keys_a), set(keys_b)
    if judges is not None:
        keys_a = {k for k in keys_a if len(k) < 3 or k[2] in judges}
        keys_b = {k for k in keys_b if len(k) < 3 or k[2] in judges}

    def order(key: Any) -> tuple[Any, ...]:
        return (_cell_order(key[0]), *key[1:])

    both = sorted(keys_a & keys_b, key=order)
    alone = [(k, "only in A") for k in keys_a - keys_b]
    alone += [(k, "only in B") for k in keys_b - keys_a]
    return both, sorted(alone, key=lambda item: order(item[0]))


def _check_judges(judges: Sequence[str] | None, *sides: Results) -> None:
    if judges is None:
        return
    known = {key[2] for side in sides for key in side.refusal}
    unknown = [judge for judge in judges if judge not in known]
    if unknown:
        raise ValueError(
            f"judge(s) {', '.join(unknown)} not in these results; "
            f"they have {', '.join(sorted(known)) or 'no refusal verdicts'}"
        )


def _finish(
    label_a: str,
    label_b: str,
    settings: Settings,
    refusal: list[Comparison],
    chrf: list[Comparison],
    missing: list[Missing],
) -> ComparisonReport:
    notes = []
    untested = [c for c in refusal + chrf if c.p_value is None]
    if untested:
        notes.append(
            f"{len(untested)} comparison(s) untested: per-prompt files (evals/refusal, "
            "generations/chrf) are missing on one side"
        )
    return ComparisonReport(
        label_a,
        label_b,
        settings,
        adjust_family(refusal) + adjust_family(chrf),
        missing,
        notes,
    )


def compare_results(
    results_a: Results,
    results_b: Results,
    settings: Settings | None = None,
    judges: Sequence[str] | None = None,
    labels: tuple[str, str] | None = None,
) -> ComparisonReport:
    """B against A for every cell, checkpoint and judge that both have.

    Holm's adjustment runs over the refusal comparisons shown (all cells, checkpoints and the
    selected judges) and, separately, over the chrF comparisons.
    """
    settings = settings or Settings()
    _check_judges(judges, results_a, results_b)
    label_a, label_b = labels or (str(results_a.root), str(results_b.root))
    missing: list[Missing] = []
    both, alone = _pairs(results_a.refusal, results_b.refusal, judges)
    refusal = [
        _compare_refusal(k, results_a.refusal[k], results_b.refusal[k], settings) for k in both
    ]
    missing += [Missing(REFUSAL, *key, side) for key, side in alone]
    chrf = []
    both, alone = _pairs(results_a.chrf, results_b.chrf, None)
    for key in both:
        comparison = _compare_chrf(key, results_a.chrf[key], results_b.chrf[key], settings)
        if comparison is None:
            # One side has translations without a metrics file, the other the reverse.
            reason = "metrics on one side, translations on the other"
            missing.append(Missing(CHRF, *key, None, reason))
        else:
            chrf.append(comparison)
    missing += [Missing(CHRF, *key, None, side) for key, side in alone]
    return _finish(label_a, label_b, settings, refusal, chrf, missing)


def compare_metrics(
    dir_a: str | Path,
    dir_b: str | Path,
    settings: Settings | None = None,
    judges: Sequence[str] | None = None,
) -> ComparisonReport:
    """B against A for two results folders (their layout: `safetydrift.compare`'s docstring)."""
    return compare_results(read_results(dir_a), read_results(dir_b), settings, judges)


def compare_to_base(
    root: str | Path,
    settings: Settings | None = None,
    judges: Sequence[str] | None = None,
) -> ComparisonReport:
    """Every cell and checkpoint of one results folder against the base model (`base ckpt-000`).

    Side A of each comparison is the base model, side B the checkpoint; Holm's adjustment runs
    over all the refusal comparisons shown, and separately over the chrF ones.
    """
    settings = settings or Settings()
    results = read_results(root)
    _check_judges(judges, results)
    refusal, chrf, missing = [], [], []
    for (cell, checkpoint, judge), entry in sorted(
        results.refusal.items(), key=lambda item: (_cell_order(item[0][0]), *item[0][1:])
    ):
        if cell == BASE_CELL or (judges is not None and judge not in judges):
            continue
        base = results.refusal.get((BASE_CELL, BASE_CHECKPOINT, judge))
        if base is None:
            missing.append(Missing(REFUSAL, cell, checkpoint, judge, NO_BASE))
            continue
        refusal.append(_compare_refusal((cell, checkpoint, judge), base, entry, settings))
    for (cell, checkpoint), entry in sorted(
        results.chrf.items(), key=lambda item: (_cell_order(item[0][0]), item[0][1])
    ):
        if cell == BASE_CELL:
            continue
        base = results.chrf.get((BASE_CELL, BASE_CHECKPOINT))
        comparison = None
        if base is not None:
            comparison = _compare_chrf((cell, checkpoint), base, entry, settings)
        if comparison is None:
            missing.append(Missing(CHRF, cell, checkpoint, None, NO_BASE))
        else:
            chrf.append(comparison)
    return _finish("base model", str(root), settings, refusal, chrf, missing)


def _parsed_cells(results: Results) -> dict[str, Cell]:
    """The cells a results folder holds, by name (the base model and unknown names aside)."""
    names = {key[0] for key in results.refusal} | {key[0] for key in results.chrf}
    parsed = {}
    for name in names - {BASE_CELL}:
        with contextlib.suppress(ValueError):
            parsed[name] = parse_cell(name)
    return parsed


def seed_cells(results: Results, other: Results, label: str) -> list[str]:
    """Name `results`' cells from before the seed axis (METHOD-LR) METHOD-LR-SEED, with the
    `train.seed` of its params.yaml, where `other` names its cells with seeds: the same training
    then pairs with the same seed's cell. Returns a note saying what was done, or why not."""
    unseeded = {name: c for name, c in _parsed_cells(results).items() if c.seed is None}
    if not unseeded or all(c.seed is None for c in _parsed_cells(other).values()):
        return []
    params_file = results.root / PARAMS_FILE
    seed = get(load_params(params_file), "train.seed", None) if params_file.exists() else None
    if seed is None:
        return [
            f"{label}: cells named without a seed ({', '.join(sorted(unseeded))}, from before "
            f"`grid.seeds`) and no `train.seed` in {PARAMS_FILE} to name them by: they pair "
            "with no seeded cell"
        ]
    seed = seed_value(seed, "train.seed")
    renamed = {name: cell_name(c.method, c.learning_rate, seed) for name, c in unseeded.items()}
    results.refusal = {(renamed.get(k[0], k[0]), *k[1:]): v for k, v in results.refusal.items()}
    results.chrf = {(renamed.get(k[0], k[0]), *k[1:]): v for k, v in results.chrf.items()}
    return [
        f"{label}: cells from before `grid.seeds` read as seed {seed} (its {PARAMS_FILE}'s "
        "`train.seed`)"
    ]
