"""Rescoring saved responses without a model: a reviewer's refusal rates and chrF from a file.

Anyone with a table of responses (the pipeline's generations, or another study's outputs) can
rerun the judges and chrF on it. Every error names the file, and the data row where one row is
at fault, so a bad row in a file of thousands can be found.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetydrift.files import read_csv, read_jsonl, write_csv, write_jsonl
from safetydrift.judges import Verdict, get_judge, judge_responses
from safetydrift.metrics import chrf_summary, refusal_summary
from safetydrift.response_classes import (
    RESPONSE_CLASS_JUDGE,
    ResponseClassSettings,
    ResponseClassVerdict,
    class_counts,
    classify_responses,
)

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
    return read_csv(path)


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


def _finish_column(path: Path, rows: list[dict[str, Any]], column: str) -> list[str | None]:
    reasons: list[str | None] = []
    for number, row in enumerate(rows, start=1):
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            raise ValueError(
                f"{path}, data row {number}: `{column}` is a {type(value).__name__}, "
                "not text such as stop or length"
            )
        # A blank CSV cell is a reason nobody recorded, as null is in JSON.
        reasons.append(value or None)
    return reasons


def _verdict_rows(
    rows: list[dict[str, Any]],
    prompt_column: str | None,
    responses: list[str],
    verdicts: dict[str, list[Verdict] | list[ResponseClassVerdict]],
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
            # One flat column per measurement, the same in CSV and JSON Lines.
            for key, value in getattr(verdict, "evidence", {}).items():
                row[f"{name}.{key}"] = value
        out.append(row)
    return out


def judge_file(
    path: str | Path,
    judge_names: Sequence[str],
    prompt_column: str | None = "prompt",
    response_column: str = "response",
    output: str | Path | None = None,
    finish_column: str | None = None,
    response_class_settings: ResponseClassSettings | None = None,
) -> dict[str, Any]:
    """Judge every response in a table; optionally write per-row verdicts to `output`.

    Empty (or whitespace-only) responses are judged like any other, which makes them
    non-refusals under all three text judges, and are counted in `empty_responses` so that a
    run of failed generations cannot pass for a model that complies. `prompt_column=None`
    judges a table that has no prompts.

    The `response-class` judge compares each response with its request, so it needs
    `prompt_column`; `finish_column` (optional) names the column holding each generation's
    finish reason (`length` marks a generation cut at the token limit). Its summary adds
    `classes` (all four classes counted) and `settings`; its `refusal_rate` is the share of
    class `refusal`; its per-row output adds one column per evidence field.

    Returns the first judge's summary at the top level (`judge`, `n`, `refusal_rate`, ...); with
    several judges, `judges` holds every judge's summary by name.
    """
    path = Path(path)
    if isinstance(judge_names, str):
        judge_names = [judge_names]
    if not judge_names:
        raise ValueError("no judges named")
    names = list(
        dict.fromkeys(
            name if name == RESPONSE_CLASS_JUDGE else get_judge(name).name for name in judge_names
        )
    )
    classify = RESPONSE_CLASS_JUDGE in names
    if classify and not prompt_column:
        raise ValueError(
            f"judge `{RESPONSE_CLASS_JUDGE}` compares each response with its request: "
            "name the request column (--prompt-column)"
        )
    output_path = None if output is None else Path(output)
    if output_path is not None:
        _suffix(output_path, "output")
        if output_path.resolve() == path.resolve():
            raise ValueError(f"{output_path}: the output would overwrite the input file")

    rows = read_table(path)
    columns = [response_column] + ([prompt_column] if prompt_column else [])
    columns += [finish_column] if finish_column else []
    if classify and rows and not any(prompt_column in row for row in rows):
        raise ValueError(
            f"{path}: judge `{RESPONSE_CLASS_JUDGE}` needs the requests, but there is no column "
            f"`{prompt_column}`; name the request column with --prompt-column (columns present: "
            f"{', '.join(f'`{c}`' for c in dict.fromkeys(k for row in rows for k in row))})"
        )
    _require_columns(path, rows, columns)
    responses = _text_column(path, rows, response_column)
    text_judges = [name for name in names if name != RESPONSE_CLASS_JUDGE]
    verdicts: dict[str, Any] = judge_responses(responses, text_judges) if text_judges else {}
    settings = response_class_settings or ResponseClassSettings()
    if classify:
        prompts = _text_column(path, rows, prompt_column)
        reasons = _finish_column(path, rows, finish_column) if finish_column else None
        verdicts[RESPONSE_CLASS_JUDGE] = classify_responses(
            prompts, responses, reasons, settings=settings
        )
    empty = sum(1 for response in responses if not response.strip())

    summaries = {
        name: {"judge": name, **refusal_summary(verdicts[name]), "empty_responses": empty}
        for name in names
    }
    if classify:
        summaries[RESPONSE_CLASS_JUDGE]["classes"] = class_counts(verdicts[RESPONSE_CLASS_JUDGE])
        summaries[RESPONSE_CLASS_JUDGE]["settings"] = settings.as_params()
    if output_path is not None:
        as_csv = output_path.suffix.lower() == ".csv"
        ordered = {name: verdicts[name] for name in names}
        table = _verdict_rows(rows, prompt_column, responses, ordered, join_matched=as_csv)
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
