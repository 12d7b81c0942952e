"""Rescoring saved responses without a model: a reviewer's refusal rates and chrF from a file.

Anyone with a table of responses (the pipeline's generations, or another study's outputs) can
rerun the judges and chrF on it. Every error names the file, and the data row where one row is
at fault, so a bad row in a file of thousands can be found.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetydrift.io import read_jsonl, write_csv, write_jsonl
from safetydrift.judges import Verdict, get_judge, judge_responses
from safetydrift.metrics import chrf_summary, refusal_summary

TABLE_SUFFIXES = (".jsonl", ".csv")
MATCHED_SEPARATOR = " | "


def _suffix(path: Path, role: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(
            f"{path}: cannot tell the format of this {role} from its extension "
            f"`{path.suffix}`; use one of {', '.join(TABLE_SUFFIXES)}"
        )
    return suffix


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a `.jsonl` (one JSON object per line) or `.csv` (with a header) file, UTF-8."""
    path = Path(path)
    if _suffix(path, "input") == ".jsonl":
        return read_jsonl(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        # utf-8-sig: spreadsheet programs put a byte-order mark before the first column name.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 ({error})") from None
    except csv.Error as error:
        raise ValueError(f"{path}: not readable as CSV ({error})") from None


def _require_columns(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        raise ValueError(f"{path}: no data rows")
    present = list(dict.fromkeys(key for row in rows for key in row))
    missing = [column for column in columns if column not in present]
    if missing:
        raise ValueError(
            f"{path}: no column {', '.join(f'`{c}`' for c in missing)}; "
            f"columns present: {', '.join(f'`{c}`' for c in present) or 'none'}"
        )


def _text_column(path: Path, rows: list[dict[str, Any]], column: str) -> list[str]:
    texts = []
    for number, row in enumerate(rows, start=1):
        value = row.get(column)
        if not isinstance(value, str):
            if column not in row:
                problem = "missing"
            elif value is None:
                problem = "null"
            else:
                problem = f"a {type(value).__name__}, not text"
            raise ValueError(f"{path}, data row {number}: `{column}` is {problem}")
        texts.append(value)
    return texts


def _verdict_rows(
    rows: list[dict[str, Any]],
    prompt_column: str | None,
    responses: list[str],
    verdicts: dict[str, list[Verdict]],
    join_matched: bool,
) -> list[dict[str, Any]]:
    out = []
    for index, response in enumerate(responses):
        row = {
            "row": index + 1,
            "prompt": rows[index].get(prompt_column) if prompt_column else None,
            "response": response,
        }
        for name, judged in verdicts.items():
            verdict = judged[index]
            row[f"{name}.refusal"] = verdict.refusal
            row[f"{name}.label"] = verdict.label
            # CSV cells hold one string; JSON keeps the list, as the pipeline's own files do.
            matched = list(verdict.matched)
            row[f"{name}.matched"] = MATCHED_SEPARATOR.join(matched) if join_matched else matched
        out.append(row)
    return out


def judge_file(
    path: str | Path,
    judge_names: Sequence[str],
    prompt_column: str | None = "prompt",
    response_column: str = "response",
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Judge every response in a table; optionally write per-row verdicts to `output`.

    Empty (or whitespace-only) responses are judged like any other, which makes them
    non-refusals under all three judges, and are counted in `empty_responses` so that a run of
    failed generations cannot pass for a model that complies. `prompt_column=None` judges a
    table that has no prompts.

    Returns the first judge's summary at the top level (`judge`, `n`, `refusal_rate`, ...); with
    several judges, `judges` holds every judge's summary by name.
    """
    path = Path(path)
    if isinstance(judge_names, str):
        judge_names = [judge_names]
    if not judge_names:
        raise ValueError("no judges named")
    names = list(dict.fromkeys(get_judge(name).name for name in judge_names))
    output_path = None if output is None else Path(output)
    if output_path is not None:
        _suffix(output_path, "output")
        if output_path.resolve() == path.resolve():
            raise ValueError(f"{output_path}: the output would overwrite the input file")

    rows = read_table(path)
    columns = [response_column] + ([prompt_column] if prompt_column else [])
    _require_columns(path, rows, columns)
    responses = _text_column(path, rows, response_column)
    verdicts = judge_responses(responses, names)
    empty = sum(1 for response in responses if not response.strip())

    summaries = {
        name: {"judge": name, **refusal_summary(verdicts[name]), "empty_responses": empty}
        for name in names
    }
    if output_path is not None:
        as_csv = output_path.suffix.lower() == ".csv"
        table = _verdict_rows(rows, prompt_column, responses, verdicts, join_matched=as_csv)
        if as_csv:
            write_csv(output_path, table, fieldnames=list(table[0]))
        else:
            write_jsonl(output_path, table)

    first = summaries[names[0]]
    if len(names) == 1:
        return first
    return {**first, "judges": summaries}


def chrf_file(
    path: str | Path,
    hypothesis_column: str = "response",
    reference_column: str = "chosen",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Corpus chrF of a table's hypotheses against its references, with a bootstrap interval."""
    path = Path(path)
    rows = read_table(path)
    _require_columns(path, rows, [hypothesis_column, reference_column])
    hypotheses = _text_column(path, rows, hypothesis_column)
    references = _text_column(path, rows, reference_column)
    return chrf_summary(
        hypotheses, references, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
