"""Markdown table pieces shared by the study's report (`safetydrift.report`) and the check's
check.md (`safetydrift.check`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safetydrift.stats.comparison import format_p


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines; a `|` or line break inside a cell would end the cell or row."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def rate_cell(value: float | None, low: float | None = None, high: float | None = None) -> str:
    """`0.123 [0.101, 0.150]`; the value alone without its interval, `—` without a value."""
    if value is None:
        return "—"
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def p_cell(p: float | None) -> str:
    """`0.003`, `< 0.001`, `—` for no test."""
    return "—" if p is None else format_p(p).removeprefix("= ")
