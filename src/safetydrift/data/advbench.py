"""AdvBench's harmful requests: read from the hub, a local file or a URL of the original CSV,
written as numbered prompts, and read back."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from safetydrift.data.sources import DataError, Source, nonempty_text, read_source, require_columns
from safetydrift.files import parse_csv, read_jsonl, write_jsonl

ADVBENCH_COLUMNS = ("prompt", "goal")  # the hub copy says `prompt`; the original CSV says `goal`


def read_advbench_rows(source: Source) -> list[dict[str, Any]]:
    if source.is_url:
        with urllib.request.urlopen(source.location, timeout=60) as response:  # noqa: S310
            data = response.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise DataError(
                f"{source.location}, line {line}: not valid UTF-8 ({error.reason})"
            ) from None
        return parse_csv(text, source.location)
    return read_source(source, split="train", key="data.advbench.source")


def prepare_advbench(source: Source, out_path: Path) -> dict[str, Any]:
    rows = read_advbench_rows(source)
    if not rows:
        raise DataError(f"{source.location}: no rows")
    column = next((c for c in ADVBENCH_COLUMNS if c in rows[0]), None)
    if column is None:
        raise DataError(
            f"{source.location}: expected a column `prompt` or `goal` "
            f"(present: {', '.join(sorted(rows[0]))})"
        )
    prompts = []
    for number, row in enumerate(rows, start=1):
        if column not in row:
            raise DataError(
                f"{source.location}, row {number}: no `{column}` (the first row has it)"
            )
        prompt = row[column]
        if not nonempty_text(prompt):
            raise DataError(f"{source.location}, row {number}: empty `{column}`")
        prompts.append({"id": number - 1, "prompt": prompt.strip()})
    write_jsonl(out_path, prompts)
    return {**source.describe(), "column": column, "rows": len(prompts)}


def read_advbench(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    require_columns(rows, ("id", "prompt"), str(path))
    return rows
