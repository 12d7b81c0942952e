"""The report's paired tests: every checkpoint against the base model, and the methods against
each other at the same learning rate, seed and checkpoint, on the same prompts.

Each cell is evaluated on the same AdvBench prompts and the same MT-Pref test sentences as the
base model, so differences are tested on the pairs (`safetydrift.stats`), never read off two
overlapping intervals:

- keyword refusal rate (`report.primary_judge`) and harmful-answer rate (`harm.primary_judge`):
  McNemar's exact test on the prompts, matched by id, with Tango's interval for the difference.
  A harmful answer is a response of class `answer` that the judge calls harmful; a prompt whose
  answer the judge could not read on either side is left out of that pair of checkpoints;
- chrF: a paired bootstrap over the same test sentences (matched by id) of the translations
  under `generations/chrf/`.

Holm's adjustment runs over each metric's family: every test of that metric the report shows
(against the base model and between methods). "No change" is only ever said by the TOST
against the equivalence margin (`report.equivalence_margin`, `report.chrf_equivalence_margin`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, Cell, checkpoint_label
from safetydrift.compare.pairing import Settings
from safetydrift.compare.results import read_results
from safetydrift.files import read_jsonl
from safetydrift.judges import canonical_judge_name
from safetydrift.markdown import markdown_table, p_cell
from safetydrift.params import ParamError, get
from safetydrift.response_classes import ANSWER
from safetydrift.stats.comparison import (
    CHRF,
    HARMFUL_ANSWER,
    REFUSAL,
    Comparison,
    adjust_family,
    chrf_points,
    compare_chrf,
    compare_refusals,
    describe_difference,
)

BASE_CHECKPOINT = checkpoint_label(0.0)
AGAINST_BASE = "against base"
BETWEEN_METHODS = "between methods"
MEASUREMENTS = (REFUSAL, HARMFUL_ANSWER, CHRF)
CSV_FIELDS = (
    "comparison", "measurement", "judge", "checkpoint", "cell_a", "cell_b", "n", "value_a",
    "value_b", "difference", "ci_low", "ci_high", "test", "p_value", "p_holm", "margin",
    "tost_p", "tost_p_holm", "verdict", "family_size", "alpha",
)  # fmt: skip


def settings_from_params(params: Mapping[str, Any]) -> Settings:
    """Margins, alpha and resamples of the report's tests (`report.*`), checked."""
    params = dict(params)
    settings = Settings(
        margin=float(get(params, "report.equivalence_margin", 0.05)),
        chrf_margin=float(get(params, "report.chrf_equivalence_margin", 1.0)),
        alpha=float(get(params, "report.alpha", 0.05)),
        confidence=float(get(params, "refusal.confidence", 0.95)),
        n_resamples=int(get(params, "report.paired_resamples", 1000)),
        seed=int(get(params, "chrf.seed", 0)),
    )
    if not 0 < settings.margin < 1:
        raise ParamError(
            f"params.yaml: `report.equivalence_margin` is a rate difference in (0, 1), "
            f"got {settings.margin}"
        )
    if settings.chrf_margin <= 0:
        raise ParamError(
            f"params.yaml: `report.chrf_equivalence_margin` must be > 0, got {settings.chrf_margin}"
        )
    if not 0 < settings.alpha < 0.5:
        raise ParamError(f"params.yaml: `report.alpha` must lie in (0, 0.5), got {settings.alpha}")
    if settings.n_resamples < 1:
        raise ParamError(
            f"params.yaml: `report.paired_resamples` must be >= 1, got {settings.n_resamples}"
        )
    return settings


# --------------------------------------------------------------------------------------------
# Per-prompt outcomes


@dataclass
class PromptOutcomes:
    """Per-prompt outcomes of every (cell, checkpoint) that has its per-prompt files."""

    refusal: dict[tuple[str, str], dict[Any, bool]] = field(default_factory=dict)
    harmful: dict[tuple[str, str], dict[Any, bool | None]] = field(default_factory=dict)
    translations: dict[tuple[str, str], dict[Any, tuple[str, str]]] = field(default_factory=dict)


def harmful_outcomes(path: Path, judge: str) -> dict[str, dict[Any, bool | None]]:
    """{checkpoint: {id: harmful answer}} from `evals/harm/CELL.jsonl`; None where the response
    is an answer whose judge output could not be read (neither harmful nor harmless)."""
    outcomes: dict[str, dict[Any, bool | None]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        verdict = row.get(judge)
        if row.get("class") != ANSWER:
            # Not an answer, so not a harmful answer; with `harm.judged_classes: [answer]` such
            # a row is written unjudged, without a verdict.
            harmful = False
        elif not isinstance(verdict, dict) or "harmful" not in verdict:
            raise ValueError(f"{path}, row {number}: no verdict of judge `{judge}`")
        else:
            harmful = verdict["harmful"]
        by_id = outcomes.setdefault(row["checkpoint"], {})
        if row["id"] in by_id:
            raise ValueError(f"{path}, row {number}: prompt id {row['id']!r} appears twice")
        by_id[row["id"]] = harmful
    return outcomes


def read_outcomes(root: Path, keyword_judge: str, harm_judge: str | None) -> PromptOutcomes:
    """What the paired tests need from a workspace: the keyword judge's verdicts, the harm judge's
    harmful answers and the translations, per cell and checkpoint."""
    results = read_results(root)
    outcomes = PromptOutcomes()
    for (cell, checkpoint, judge), entry in results.refusal.items():
        if judge == keyword_judge and entry.verdicts is not None:
            outcomes.refusal[(cell, checkpoint)] = entry.verdicts
    for key, entry in results.chrf.items():
        if entry.rows is not None:
            outcomes.translations[key] = entry.rows
    if harm_judge is not None:
        for path in sorted((root / "evals" / "harm").glob("*.jsonl")):
            for checkpoint, by_id in harmful_outcomes(path, harm_judge).items():
                outcomes.harmful[(path.stem, checkpoint)] = by_id
    return outcomes


# --------------------------------------------------------------------------------------------
# The tests


@dataclass(frozen=True)
class PairedTest:
    """One comparison the report shows: B (a checkpoint) against A (the base model, or another
    method's cell at the same rate and checkpoint)."""

    kind: str  # AGAINST_BASE or BETWEEN_METHODS
    cell_a: str
    checkpoint_a: str
    comparison: Comparison  # its `cell` and `checkpoint` are B's

    @property
    def cell_b(self) -> str:
        return self.comparison.cell


@dataclass
class PairedTests:
    settings: Settings
    keyword_judge: str
    harm_judge: str | None
    tests: list[PairedTest]
    untested: list[str]  # comparisons without per-prompt files on both sides, and why

    def family_size(self, measurement: str) -> int:
        return sum(1 for t in self.tests if t.comparison.measurement == measurement)

    def find(
        self, kind: str, measurement: str, cell_b: str, checkpoint: str, cell_a: str | None = None
    ) -> PairedTest | None:
        for test in self.tests:
            c = test.comparison
            if (test.kind, c.measurement, c.cell, c.checkpoint) == (
                kind,
                measurement,
                cell_b,
                checkpoint,
            ) and (cell_a is None or test.cell_a == cell_a):
                return test
        return None


def _matched(a: Mapping[Any, Any], b: Mapping[Any, Any], where: str) -> list[Any]:
    if set(a) != set(b):
        raise ValueError(
            f"{where}: the two sides have different prompt ids ({len(set(a) - set(b))} only on "
            f"one side, {len(set(b) - set(a))} only on the other): a paired test needs the same "
            "prompts on both sides"
        )
    return list(a)


def _compare(
    measurement: str,
    outcomes: PromptOutcomes,
    side_a: tuple[str, str],
    side_b: tuple[str, str],
    settings: Settings,
    judge: str | None,
) -> Comparison | str:
    """The comparison of B with A, or why it cannot be made."""
    where = f"{measurement} {side_b[0]} {side_b[1]} against {side_a[0]} {side_a[1]}"
    table = {
        REFUSAL: outcomes.refusal,
        HARMFUL_ANSWER: outcomes.harmful,
        CHRF: outcomes.translations,
    }[measurement]
    a, b = table.get(side_a), table.get(side_b)
    if a is None or b is None:
        absent = " and ".join(f"{c} {k}" for (c, k), v in ((side_a, a), (side_b, b)) if v is None)
        return f"{where}: no per-prompt results for {absent}"
    ids = _matched(a, b, where)
    cell, checkpoint = side_b
    if measurement == CHRF:
        references = [a[i][1] for i in ids]
        if references != [b[i][1] for i in ids]:
            raise ValueError(f"{where}: the references differ: two different test sets")
        return compare_chrf(
            [a[i][0] for i in ids],
            [b[i][0] for i in ids],
            references,
            cell=cell,
            checkpoint=checkpoint,
            margin=settings.chrf_margin,
            alpha=settings.alpha,
            confidence=settings.confidence,
            n_resamples=settings.n_resamples,
            seed=settings.seed,
        )
    # Harmful answers: a prompt is left out where either side's answer could not be judged.
    known = [i for i in ids if a[i] is not None and b[i] is not None]
    if not known:
        return f"{where}: no prompt judged on both sides"
    return compare_refusals(
        [a[i] for i in known],
        [b[i] for i in known],
        cell=cell,
        checkpoint=checkpoint,
        judge=judge or "",
        margin=settings.margin,
        alpha=settings.alpha,
        confidence=settings.confidence,
        measurement=measurement,
    )


def paired_tests(
    outcomes: PromptOutcomes,
    cells: Sequence[Cell],
    fractions: Sequence[float],
    settings: Settings,
    keyword_judge: str,
    harm_judge: str | None,
) -> PairedTests:
    """Every checkpoint against the base model, and every two methods at the same rate, seed
    and checkpoint (A: the method listed first in `grid.methods`), for each metric; Holm over
    each metric's tests."""
    labels = [checkpoint_label(f) for f in fractions]
    judges = {REFUSAL: keyword_judge, HARMFUL_ANSWER: harm_judge, CHRF: None}
    measurements = [m for m in MEASUREMENTS if m != HARMFUL_ANSWER or harm_judge is not None]
    plan: list[tuple[str, tuple[str, str], tuple[str, str]]] = [
        (AGAINST_BASE, (BASE_CELL, BASE_CHECKPOINT), (cell.name, label))
        for cell in cells
        for label in labels
    ]
    methods = list(dict.fromkeys(c.method for c in cells))
    rates = list(dict.fromkeys(c.learning_rate for c in cells))
    seeds = list(dict.fromkeys(c.seed for c in cells))
    # Two methods trained with the same seed: the seeds' own scatter is the seeds section's.
    for rate in rates:
        for seed in seeds:
            for first, second in itertools.combinations(methods, 2):
                for label in labels:
                    a, b = Cell(first, rate, seed).name, Cell(second, rate, seed).name
                    plan.append((BETWEEN_METHODS, (a, label), (b, label)))
    tests: list[PairedTest] = []
    untested: list[str] = []
    for measurement in measurements:
        done = []
        for kind, side_a, side_b in plan:
            result = _compare(measurement, outcomes, side_a, side_b, settings, judges[measurement])
            if isinstance(result, str):
                untested.append(result)
            else:
                done.append((kind, side_a, result))
        adjusted = adjust_family([c for _, _, c in done])
        tests += [
            PairedTest(kind, side_a[0], side_a[1], comparison)
            for (kind, side_a, _), comparison in zip(done, adjusted, strict=True)
        ]
    return PairedTests(settings, keyword_judge, harm_judge, tests, untested)


def collect_paired_tests(
    params: Mapping[str, Any],
    cells: Sequence[Cell],
    fractions: Sequence[float],
    root: Path,
    keyword_judge: str,
    harm_judge: str | None,
) -> PairedTests:
    settings = settings_from_params(params)
    keyword_judge = canonical_judge_name(keyword_judge)  # results are read under today's names
    outcomes = read_outcomes(Path(root), keyword_judge, harm_judge)
    return paired_tests(outcomes, cells, fractions, settings, keyword_judge, harm_judge)


def drop_interval(test: PairedTest | None) -> tuple[float | None, float | None]:
    """Figure 1b's refusal-rate drop (base − checkpoint, in points): its paired interval."""
    c = None if test is None else test.comparison
    if c is None or c.ci_low is None or c.ci_high is None:
        return None, None
    return -100 * c.ci_high, -100 * c.ci_low


# --------------------------------------------------------------------------------------------
# The report's section


def metric_name(tests: PairedTests, measurement: str) -> str:
    if measurement == REFUSAL:
        return f"keyword refusal rate (`{tests.keyword_judge}`)"
    if measurement == HARMFUL_ANSWER:
        return f"harmful-answer rate (`{tests.harm_judge}`)"
    return "chrF"


def _number(comparison: Comparison, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    rate = comparison.measurement != CHRF
    digits = 3 if rate else 1
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _difference(c: Comparison) -> str:
    text = _number(c, c.difference, signed=True)
    if c.ci_low is not None and c.ci_high is not None:
        text += f" [{_number(c, c.ci_low, True)}, {_number(c, c.ci_high, True)}]"
    return text


def _row(test: PairedTest, tests: PairedTests) -> list[str]:
    c = test.comparison
    return [
        metric_name(tests, c.measurement),
        _number(c, c.value_a),
        _number(c, c.value_b),
        _difference(c),
        str(c.n),
        p_cell(c.p_value),
        p_cell(c.p_holm),
        p_cell(c.tost_p_holm),
        c.verdict,
    ]


TEST_COLUMNS = ["n", "p", "Holm p", "TOST Holm p", "verdict"]


def _statements(
    tests: PairedTests, cells: Sequence[Cell], fixed_lr: float, final: str
) -> list[str]:
    """The tested statements at `fixed_lr`, final checkpoint: each against the base model, then
    each two methods."""
    at_rate = [c for c in cells if math.isclose(c.learning_rate, fixed_lr, rel_tol=1e-9)]
    lines = []
    for cell in at_rate:
        said = [
            f"{metric_name(tests, m)}: {describe_difference(t.comparison, 'the base model')}"
            for m in MEASUREMENTS
            if (t := tests.find(AGAINST_BASE, m, cell.name, final)) is not None
        ]
        if said:
            lines.append(f"- `{cell.name}`, {final}: " + "; ".join(said) + ".")
    for first, second in itertools.combinations(at_rate, 2):
        if first.seed != second.seed:
            continue
        said = [
            f"{metric_name(tests, m)} " + describe_difference(t.comparison, f"`{first.name}`")
            for m in MEASUREMENTS
            if (t := tests.find(BETWEEN_METHODS, m, second.name, final, first.name)) is not None
        ]
        if said:
            lines.append(f"- `{second.name}` against `{first.name}`, {final}: " + "; ".join(said))
            lines[-1] += "."
    return lines


def section(tests: PairedTests, cells: Sequence[Cell], fixed_lr: float, final: str) -> list[str]:
    """The report's "Paired tests" section."""
    s = tests.settings
    families = ", ".join(
        f"{tests.family_size(m)} {metric_name(tests, m)}"
        for m in MEASUREMENTS
        if m != HARMFUL_ANSWER or tests.harm_judge is not None
    )
    lines = [
        "## Paired tests",
        "",
        "Every checkpoint against the base model, and the methods against each other at the same "
        "learning rate, seed and checkpoint, each on the same prompts: rates by McNemar's exact "
        f"test with Tango's {100 * s.confidence:g}% interval for the difference, chrF by a paired "
        f"bootstrap over the same test sentences ({s.n_resamples} resamples, seed {s.seed}). "
        "Differences are B − A (checkpoint − base model; the second method − the first). "
        f"Holm's adjustment runs over each metric's family, every test of it in this section: "
        f"{families}; alpha = {s.alpha:g}. A difference is stated only at Holm-adjusted p < "
        f"alpha, and no change only where the TOST shows equivalence within ±{100 * s.margin:g} "
        f"points (rates) or ±{chrf_points(s.chrf_margin)} at Holm-adjusted p < alpha; anything "
        "else is inconclusive. No statement here rests on whether two intervals overlap.",
        "",
    ]
    floor = 2 / (s.n_resamples + 1)
    chrf_family = tests.family_size(CHRF)
    if chrf_family and chrf_family * floor >= s.alpha:
        lines += [
            f"With {s.n_resamples} resamples a chrF p-value is at least {floor:.2g}, so over "
            f"{chrf_family} chrF tests none can reach Holm-adjusted p < {s.alpha:g}; raise "
            "`report.paired_resamples` to test chrF differences.",
            "",
        ]
    statements = _statements(tests, cells, fixed_lr, final)
    if statements:
        lines += [f"At learning rate {fixed_lr}, final checkpoint:", "", *statements, ""]
    base_rows = [
        [t.cell_b, t.comparison.checkpoint, *_row(t, tests)]
        for t in tests.tests
        if t.kind == AGAINST_BASE
    ]
    lines += ["### Every checkpoint against the base model", ""]
    header = ["cell", "checkpoint", "metric", "base", "checkpoint value", "Δ [CI]", *TEST_COLUMNS]
    lines += (
        markdown_table(header, base_rows) if base_rows else ["No tests: no per-prompt results."]
    ) + [""]
    method_rows = [
        [t.cell_a, t.cell_b, t.comparison.checkpoint, *_row(t, tests)]
        for t in tests.tests
        if t.kind == BETWEEN_METHODS
    ]
    if method_rows:
        header = ["A", "B", "checkpoint", "metric", "A value", "B value", "Δ [CI]", *TEST_COLUMNS]
        lines += ["### Methods against each other", "", *markdown_table(header, method_rows), ""]
    if tests.untested:
        lines += [
            f"Not tested ({len(tests.untested)}; per-prompt files missing, not counted in any "
            "family):",
            "",
            *(f"- {reason}" for reason in tests.untested),
            "",
        ]
    return lines


def csv_rows(tests: PairedTests) -> list[dict[str, Any]]:
    """reports/paired_tests.csv: one row per test the report shows."""
    rows = []
    for t in tests.tests:
        c = t.comparison
        rows.append(
            {
                "comparison": t.kind,
                "measurement": c.measurement,
                "judge": c.judge or "",
                "checkpoint": c.checkpoint,
                "cell_a": t.cell_a,
                "cell_b": c.cell,
                "n": c.n,
                "value_a": c.value_a,
                "value_b": c.value_b,
                "difference": c.difference,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "test": c.test,
                "p_value": c.p_value,
                "p_holm": c.p_holm,
                "margin": c.margin,
                "tost_p": c.tost_p,
                "tost_p_holm": c.tost_p_holm,
                "verdict": c.verdict,
                "family_size": tests.family_size(c.measurement),
                "alpha": c.alpha,
            }
        )
    return rows
