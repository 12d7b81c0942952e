"""How a comparison report reads: the fixed-width table `safetydrift compare` prints, and each
comparison's sentence."""

from __future__ import annotations

from collections.abc import Mapping

from safetydrift.compare.pairing import ComparisonReport
from safetydrift.stats.comparison import REFUSAL, Comparison, chrf_points, describe_difference


def _cell_text(comparison: Comparison, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    scale = 100 if comparison.measurement == REFUSAL else 1
    return f"{scale * value:+.1f}" if signed else f"{scale * value:.1f}"


def _p_text(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_table(report: ComparisonReport) -> str:
    """A fixed-width table of B against A; refusal rates and differences in percent."""
    header = ["metric", "cell", "checkpoint", "judge", "A", "B", "Δ", "CI", "p", "p_holm"]
    header += ["TOST p", "verdict"]
    rows = []
    for c in report.comparisons:
        interval = (
            "—"
            if c.ci_low is None
            else f"[{_cell_text(c, c.ci_low, True)}, {_cell_text(c, c.ci_high, True)}]"
        )
        rows.append(
            [
                "refusal %" if c.measurement == REFUSAL else "chrF",
                c.cell,
                c.checkpoint,
                c.judge or "—",
                _cell_text(c, c.value_a),
                _cell_text(c, c.value_b),
                _cell_text(c, c.difference, signed=True),
                interval,
                _p_text(c.p_value),
                _p_text(c.p_holm),
                _p_text(c.tost_p_holm if c.tost_p_holm is not None else c.tost_p),
                c.verdict,
            ]
        )
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=False)]
    lines = [f"A = {report.label_a}", f"B = {report.label_b}", ""]
    for row in [header, *rows]:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    s = report.settings
    lines += [
        "",
        f"Δ = B − A, with its {100 * s.confidence:g}% CI: Tango score interval (refusal), paired "
        f"bootstrap of {s.n_resamples} resamples, seed {s.seed} (chrF).",
        "p: McNemar exact (refusal) or paired bootstrap (chrF); p_holm and TOST p: Holm-adjusted "
        "over each metric's rows.",
        f"Verdicts at alpha {s.alpha:g}; equivalence margins ±{100 * s.margin:g} points "
        f"(refusal), ±{chrf_points(s.chrf_margin)}.",
    ]
    if not report.comparisons:
        lines.append("Nothing to compare: the two sides share no cell and checkpoint.")
    if report.missing:
        lines += ["", "Missing (not compared):"]
        lines += [f"- {m.describe()}" for m in report.missing]
    lines += [f"Note: {note}" for note in report.notes]
    return "\n".join(lines)


def describe_all(
    report: ComparisonReport, reference: str = "the base model"
) -> Mapping[tuple[str, str, str, str | None], str]:
    """Report sentences keyed by (measurement, cell, checkpoint, judge)."""
    return {
        (c.measurement, c.cell, c.checkpoint, c.judge): describe_difference(c, reference)
        for c in report.comparisons
    }
