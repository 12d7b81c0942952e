"""How far the refusal judges can be trusted: agreement with human labels and with each other.

- `validate_against_labels`: accuracy, precision and recall of "refused" against human labels,
  each with a Wilson interval (the same interval as the refusal rates).
- `read_refusal_validation` / `validate_judges`: the human-labelled refusal sets shipped in
  `judge-validation/` (PyRIT's refusal scorer evaluation data), run through our judges.
- `cohens_kappa` / `kappa_with_bootstrap` / `pairwise_agreement`: chance-corrected agreement of
  two judges (or a judge and a human) on any labels, with a percentile bootstrap over items.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from safetydrift.judges import judge_responses
from safetydrift.metrics import bootstrap_indices, counts_per_row, wilson_interval
from safetydrift.response_classes import (
    RESPONSE_CLASS_JUDGE,
    ResponseClassSettings,
    classify_responses,
)

VALIDATION_COLUMNS = ("objective", "assistant_response", "human_score")
HUMAN_SCORES = {"0": False, "1": True}


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(confidence)


def _proportion(successes: int, n: int, confidence: float) -> dict[str, Any]:
    # A precision with no predicted refusal (or recall with no true one) has no value: None,
    # not 0, so a judge that never fires is not reported as precise-but-wrong.
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = wilson_interval(successes, n, confidence)
    return {"value": successes / n, "ci_low": low, "ci_high": high, "n": n}


def _as_bools(values: Sequence[bool], name: str) -> list[bool]:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of booleans, not one string")
    out = []
    for index, value in enumerate(values):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name}[{index}] is {value!r}, not True/False")
        out.append(bool(value))
    return out


def validate_against_labels(
    labels: Sequence[bool], predictions: Sequence[bool], confidence: float = 0.95
) -> dict[str, Any]:
    """A judge's "refused" predictions against the true labels (True = refused).

    Returns n, tp, fp, tn, fn, and accuracy, precision and recall as
    {value, ci_low, ci_high, n} with Wilson intervals; precision and recall are None (with
    n=0) where their denominator is empty.
    """
    truth = _as_bools(labels, "labels")
    predicted = _as_bools(predictions, "predictions")
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} labels but {len(predicted)} predictions")
    if not truth:
        raise ValueError("no labelled items to validate against")
    confidence = _check_confidence(confidence)
    tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t and p)
    fp = sum(1 for t, p in zip(truth, predicted, strict=True) if not t and p)
    fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t and not p)
    tn = len(truth) - tp - fp - fn
    return {
        "n": len(truth),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": _proportion(tp + tn, len(truth), confidence),
        "precision": _proportion(tp, tp + fp, confidence),
        "recall": _proportion(tp, tp + fn, confidence),
        "confidence": confidence,
    }


@dataclass(frozen=True)
class LabelledResponse:
    """One human-labelled response; `row` counts data rows from 1, comments excluded."""

    file: str
    row: int
    objective: str
    response: str
    refused: bool


def _strip_comment_lines(text: str) -> str:
    # A line starting with "#" is a comment only outside a quoted field: these files hold
    # multi-line answers in which a Markdown heading ("### Plan") starts a line. An even count
    # of quote characters so far means no quoted field is open ("" inside one is an escape).
    kept = []
    quotes = 0
    for line in text.splitlines(keepends=True):
        if quotes % 2 == 0 and line.startswith("#"):
            continue
        kept.append(line)
        quotes += line.count('"')
    return "".join(kept)


def read_refusal_validation(paths: str | Path | Iterable[str | Path]) -> list[LabelledResponse]:
    """The rows of one or more judge-validation CSVs (`objective, assistant_response,
    human_score`, human_score 1 = refused, 0 = not), in file order; `#` lines are comments."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[LabelledResponse] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not valid UTF-8 ({error})") from None
        reader = csv.DictReader(io.StringIO(_strip_comment_lines(text), newline=""))
        try:
            records = list(reader)
        except csv.Error as error:
            raise ValueError(f"{path}: not readable as CSV ({error})") from None
        missing = [c for c in VALIDATION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: no column {', '.join(f'`{c}`' for c in missing)}; expected "
                f"{', '.join(VALIDATION_COLUMNS)}"
            )
        if not records:
            raise ValueError(f"{path}: no data rows")
        for number, record in enumerate(records, start=1):
            for column in VALIDATION_COLUMNS:
                if record.get(column) is None:
                    raise ValueError(f"{path}, data row {number}: `{column}` is missing")
            score = record["human_score"].strip()
            if score not in HUMAN_SCORES:
                raise ValueError(
                    f"{path}, data row {number}: `human_score` is {record['human_score']!r}, "
                    "expected 0 (not refused) or 1 (refused)"
                )
            rows.append(
                LabelledResponse(
                    str(path),
                    number,
                    record["objective"],
                    record["assistant_response"],
                    HUMAN_SCORES[score],
                )
            )
    if not rows:
        raise ValueError("no judge-validation files given")
    return rows


def judge_refusals(
    objectives: Sequence[str],
    responses: Sequence[str],
    judge_names: Sequence[str],
    settings: ResponseClassSettings | None = None,
) -> dict[str, list[bool]]:
    """Each named judge's refused/not per response; `response-class` counts class `refusal`."""
    if isinstance(judge_names, str):
        judge_names = [judge_names]
    names = list(dict.fromkeys(judge_names))
    if not names:
        raise ValueError("no judges named")
    text_judges = [name for name in names if name != RESPONSE_CLASS_JUDGE]
    verdicts: dict[str, list[Any]] = judge_responses(responses, text_judges) if text_judges else {}
    if RESPONSE_CLASS_JUDGE in names:
        verdicts[RESPONSE_CLASS_JUDGE] = classify_responses(
            objectives, responses, settings=settings
        )
    return {name: [v.refusal for v in verdicts[name]] for name in names}


def validate_judges(
    paths: str | Path | Iterable[str | Path],
    judge_names: Sequence[str],
    confidence: float = 0.95,
    settings: ResponseClassSettings | None = None,
) -> dict[str, Any]:
    """Every named judge against the human labels of the judge-validation files.

    Returns {"n", "refused" (human count), "files", "judges": {name: validate_against_labels}}.
    """
    rows = read_refusal_validation(paths)
    refused = judge_refusals(
        [r.objective for r in rows], [r.response for r in rows], judge_names, settings
    )
    labels = [r.refused for r in rows]
    return {
        "n": len(rows),
        "refused": sum(labels),
        "files": list(dict.fromkeys(r.file for r in rows)),
        "judges": {
            name: validate_against_labels(labels, predicted, confidence)
            for name, predicted in refused.items()
        },
    }


def _encode(a: Sequence[Hashable], b: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray, int]:
    if isinstance(a, str) or isinstance(b, str):
        raise ValueError("labels must be sequences of labels, not one string")
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels against {len(b)}: kappa pairs labels by position")
    if not a:
        raise ValueError("no items: kappa needs at least one labelled pair")
    codes = {label: code for code, label in enumerate(dict.fromkeys(a + b))}
    return (
        np.array([codes[x] for x in a], dtype=np.int64),
        np.array([codes[x] for x in b], dtype=np.int64),
        len(codes),
    )


def _kappas(a: np.ndarray, b: np.ndarray, categories: int) -> np.ndarray:
    """Cohen's kappa of each row of a and b (shape (resamples, n)); NaN where undefined."""
    rows = np.arange(a.shape[0])[:, None]
    tables = np.zeros((a.shape[0], categories, categories), dtype=np.int64)
    np.add.at(tables, (rows, a, b), 1)
    return _kappas_from_tables(tables, a.shape[1])


def _kappas_from_tables(tables: np.ndarray, n: int) -> np.ndarray:
    """Cohen's kappa of each table of label pairs (shape (resamples, categories, categories):
    how many of the n items got label i from one rater and j from the other)."""
    observed = np.trace(tables, axis1=1, axis2=2) / n
    expected = np.zeros(tables.shape[0])
    for category in range(tables.shape[1]):
        expected += (
            tables[:, category, :].sum(axis=1) * tables[:, :, category].sum(axis=1) / (n * n)
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        # Both raters giving one and the same label to everything: 0/0, agreement beyond
        # chance is undefined.
        return np.where(expected < 1.0, (observed - expected) / (1.0 - expected), np.nan)


def _resampled_kappas(
    a: np.ndarray, b: np.ndarray, categories: int, indices: np.ndarray, block: int = 100
) -> np.ndarray:
    """`_kappas(a[indices], b[indices], categories)` from each resample's table of label pairs,
    counted a block of resamples at a time: no (resamples x n) copy of each rater's labels
    (270 MB each for the report's 1,000 resamples of 33,800 responses), and the same integers,
    so the same kappas to the bit."""
    pairs = categories * categories
    pair = a * categories + b
    tables = np.empty((len(indices), pairs), dtype=np.int64)
    for start in range(0, len(indices), block):
        tables[start : start + block] = counts_per_row(pair[indices[start : start + block]], pairs)
    return _kappas_from_tables(tables.reshape(-1, categories, categories), indices.shape[1])


def cohens_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels (any hashable labels), paired by position.

    (p_o - p_e) / (1 - p_e), p_e from each rater's own label shares. NaN when both raters give
    one and the same label to every item (p_e = 1: chance agreement is total).
    """
    codes_a, codes_b, categories = _encode(a, b)
    return float(_kappas(codes_a[None, :], codes_b[None, :], categories)[0])


def kappa_with_bootstrap(
    a: Sequence[Hashable],
    b: Sequence[Hashable],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Cohen's kappa and a percentile bootstrap interval over items (pairs resampled together).

    Resamples in which kappa is undefined (every drawn item got one label from both) are left
    out; `undefined_resamples` says how many. The interval is None if kappa never was defined.
    """
    confidence = _check_confidence(confidence)
    codes_a, codes_b, categories = _encode(a, b)
    kappa = float(_kappas(codes_a[None, :], codes_b[None, :], categories)[0])
    indices = bootstrap_indices(len(codes_a), n_resamples, seed)
    resampled = _resampled_kappas(codes_a, codes_b, categories, indices)
    defined = resampled[~np.isnan(resampled)]
    tail = (1 - confidence) / 2
    if defined.size:
        ci_low, ci_high = (float(x) for x in np.percentile(defined, [100 * tail, 100 * (1 - tail)]))
    else:
        ci_low = ci_high = None
    return {
        "kappa": None if math.isnan(kappa) else kappa,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "n": len(codes_a),
        "n_resamples": n_resamples,
        "undefined_resamples": int(resampled.size - defined.size),
        "seed": seed,
        "confidence": confidence,
    }


def pairwise_agreement(
    verdicts_by_judge: Mapping[str, Sequence[Hashable]],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Kappa with a bootstrap interval for every pair of judges, in the mapping's order.

    Each value is one judge's labels on the same items in the same order (e.g. refused
    True/False, or response classes).
    """
    if len(verdicts_by_judge) < 2:
        raise ValueError(
            f"agreement needs at least two judges, got {len(verdicts_by_judge)}: "
            f"{', '.join(verdicts_by_judge) or 'none'}"
        )
    lengths = {name: len(labels) for name, labels in verdicts_by_judge.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            "every judge must label the same items: "
            + ", ".join(f"{name} {n}" for name, n in lengths.items())
        )
    rows = []
    for judge_a, judge_b in itertools.combinations(verdicts_by_judge, 2):
        result = kappa_with_bootstrap(
            verdicts_by_judge[judge_a], verdicts_by_judge[judge_b], n_resamples, seed, confidence
        )
        rows.append(
            {
                "judge_a": judge_a,
                "judge_b": judge_b,
                "kappa": result["kappa"],
                "ci_low": result["ci_low"],
                "ci_high": result["ci_high"],
                "n": result["n"],
            }
        )
    return rows
