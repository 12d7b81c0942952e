"""report.md: its sections, from the results, the responses and the provenance, and the
redaction of secrets before it is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from safetydrift.markdown import markdown_table
from safetydrift.paper import deviations, figures_source, paper_model, published_figures
from safetydrift.params import flatten, get
from safetydrift.report import judges as judges_report
from safetydrift.report import responses as responses_report
from safetydrift.report import seeds as seeds_report
from safetydrift.report.figures import FIG1, FIG2
from safetydrift.report.provenance import SEED_KEYS
from safetydrift.report.results import (
    MISSING,
    REFUSAL,
    Estimate,
    GridResults,
    fixed_learning_rate,
)
from safetydrift.report.tables import AGREEMENT_CSV

REPORT_MD = Path("report.md")
# Names of environment variables whose values must never appear in a report, even if a user
# pasted one into params.yaml: the report is committed and shared.
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def _fmt(estimate: Estimate | None, digits: int) -> str:
    if estimate is None:
        return MISSING
    text = f"{estimate.value:.{digits}f}"
    if estimate.ci_low is not None and estimate.ci_high is not None:
        text += f" [{estimate.ci_low:.{digits}f}, {estimate.ci_high:.{digits}f}]"
    return text


def _md_table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return lines


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    return str(value)


def _setup_section(
    params: Mapping[str, Any], results: GridResults, data_stats: Mapping[str, Any] | None
) -> list[str]:
    revision = get(params, "model.revision", None)
    pinned = "revision not pinned" if revision is None else f"revision `{revision}`"
    lines = ["## Setup", "", f"- Model: `{get(params, 'model.source', None)}` ({pinned})"]
    mtpref = get(params, "data.mtpref", None) or {}
    lines += _training_data_lines(params)
    if mtpref and mtpref.get("source") is None:
        lines.append("- chrF: not measured (no translation test set: `data.mtpref.source` is null)")
    elif mtpref:
        lines.append(
            f"- Translation data: `{mtpref.get('source')}` (hub split "
            f"`{mtpref.get('hub_split', 'train')}`, languages {_value(mtpref.get('languages'))} "
            f"→ {mtpref.get('target_language')}, split into train and test by the "
            f"`{mtpref.get('split', 'datasets')}` procedure, test ratio "
            f"{mtpref.get('test_ratio')}, seed {mtpref.get('seed')})"
        )
    stats = data_stats or {}
    counted = [
        (label, stats[key])
        for key, label in (
            ("rows_read", "read"),
            ("rows_kept", "kept"),
            ("train_rows", "train"),
            ("test_rows", "test"),
        )
        if stats.get(key) is not None
    ]
    if counted:
        lines.append("- Data rows: " + ", ".join(f"{n} {label}" for label, n in counted))
    lines.append(f"- Methods: {', '.join(get(params, 'grid.methods'))}")
    lines.append(
        "- Learning rates: "
        + ", ".join(str(float(lr)) for lr in get(params, "grid.learning_rates"))
    )
    for method in get(params, "grid.methods"):
        settings = get(params, f"methods.{method}", None)
        if settings:
            lines.append(f"  - `{method}`: {_value(flatten(settings))}")
    lines.append(
        f"- Refusal judged by `{results.primary_judge}` (primary)"
        + (
            f"; also {', '.join(f'`{j}`' for j in results.judges[1:])}"
            if results.judges[1:]
            else ""
        )
    )
    seeds = {key: get(params, key, None) for key in SEED_KEYS}
    present = {key: value for key, value in seeds.items() if value is not None}
    if present:
        lines.append("- Seeds: " + ", ".join(f"`{k}`={v}" for k, v in present.items()))
    train = get(params, "train", None) or {}
    if train:
        lines += ["", "Training hyper-parameters (`params.yaml`, `train`):", ""]
        lines += _md_table(
            ["parameter", "value"], [[k, _value(v)] for k, v in flatten(train).items()]
        )
    return lines + [""]


def _training_data_lines(params: Mapping[str, Any]) -> list[str]:
    """What the cells were fine-tuned on, when it is not the translation pairs."""
    values = get(params, "train_data", None) or {}
    if values.get("kind") != "chat":
        return []
    line = f"- Training data: chat conversations from `{values.get('source')}`"
    mixed = [
        f"{entry.get('n')} rows of `{entry.get('source')}` (seed {entry.get('seed', 0)})"
        for entry in values.get("mix") or []
    ]
    if mixed:
        line += ", mixed with " + "; ".join(mixed)
    return [line + " (truncation at `train.max_length`: each cell's `training.json`)"]


def _base_section(results: GridResults) -> list[str]:
    base = results.base
    lines = ["## Base model", ""]
    rows = [
        [f"refusal rate ({judge})", _fmt(base.refusal.get(judge), 3)] for judge in results.judges
    ]
    rows.append(["chrF", _fmt(base.chrf, 1)])
    lines += _md_table(["metric", "value [interval]"], rows)
    return lines + [""]


def _results_section(results: GridResults) -> list[str]:
    header = [
        "cell", "checkpoint", "step", f"refusal ({results.primary_judge})",
        *(f"refusal ({judge})" for judge in results.judges[1:]), "chrF",
    ]  # fmt: skip
    rows = [
        [
            row.cell,
            row.checkpoint,
            MISSING if row.step is None else row.step,
            _fmt(row.refusal.get(results.primary_judge), 3),
            *(_fmt(row.refusal.get(judge), 3) for judge in results.judges[1:]),
            _fmt(row.chrf, 1),
        ]
        for row in results.all_rows()
    ]
    return ["## Results", "", "Intervals in brackets.", "", *_md_table(header, rows), ""]


def _missing_section(results: GridResults) -> list[str]:
    lines = ["## Missing cells", ""]
    if not results.missing:
        return lines + ["None: every cell and checkpoint of the grid has its metrics.", ""]
    lines.append(
        "These have no metrics yet (still running, failed, or not run); the figures and tables "
        "leave them out rather than count them as zero."
    )
    lines.append("")
    for cell in results.missing_cells:
        described = "; ".join(m.describe() for m in results.missing if m.cell == cell)
        lines.append(f"- `{cell}`: {described}")
    return lines + [""]


@dataclass(frozen=True)
class PaperComparison:
    cell: str
    checkpoint: str
    metric: str
    theirs: float
    ours: Estimate | None

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours.value - self.theirs


def paper_comparison(results: GridResults) -> list[PaperComparison]:
    comparisons = []
    for figure in published_figures():
        cell, checkpoint, metric, theirs = (
            figure["cell"],
            figure["checkpoint"],
            figure["metric"],
            float(figure["value"]),
        )
        ours = seeds_report.paper_estimate(
            results,
            cell,
            checkpoint,
            lambda row, m=metric: (
                row.refusal.get(results.primary_judge) if m == REFUSAL else row.chrf
            ),
        )
        comparisons.append(PaperComparison(cell, checkpoint, metric, theirs, ours))
    return comparisons


def _paper_section(results: GridResults) -> list[str]:
    lines = [
        "## Differences from the paper",
        "",
        f"Published figures of Kempermann & Ramackers (2025) for `{paper_model()}` against ours "
        f"(refusal by `{results.primary_judge}`; source: {figures_source()}). Where the paper "
        "gives only a curve's endpoints, they are compared at the first and last checkpoints.",
        "",
    ]
    rows = []
    for comparison in paper_comparison(results):
        digits = 3 if comparison.metric == REFUSAL else 1
        difference = comparison.difference
        rows.append(
            [
                comparison.cell,
                comparison.checkpoint,
                "refusal rate" if comparison.metric == REFUSAL else "chrF",
                f"{comparison.theirs:.{digits}f}",
                _fmt(comparison.ours, digits),
                MISSING if difference is None else f"{difference:+.{digits}f}",
            ]
        )
    lines += _md_table(["cell", "checkpoint", "metric", "paper", "ours", "ours − paper"], rows)
    return lines + [""]


def _deviations_section(params: Mapping[str, Any]) -> list[str]:
    """Where this study's settings differ from the authors' (`safetydrift.paper`)."""
    rows = [
        [f"`{d['key']}`", _value(d["authors"]), _value(d["ours"]), d["source"]]
        for d in deviations(dict(params))
    ]
    lines = ["## Deviations from the paper", ""]
    if not rows:
        return lines + ["None: every setting the authors' procedure fixes is theirs.", ""]
    lines += ["Settings that differ from what Kempermann & Ramackers did, with the source of each:"]
    return lines + [""] + _md_table(["setting", "the authors", "this study", "source"], rows) + [""]


def _provenance_section(provenance: Mapping[str, Any]) -> list[str]:
    lines = ["## Provenance", ""]
    git = provenance.get("git") or {}
    revision = git.get("revision")
    dirty = git.get("dirty")
    if revision:
        state = {True: "uncommitted changes", False: "clean", None: "state unknown"}[dirty]
        lines.append(f"- Git revision: `{revision}` ({state})")
    else:
        lines.append("- Git revision: none (not a git repository, or no commit yet)")
    locks = provenance.get("lock_files") or {}
    for path, digest in (locks.get("files") or {}).items():
        lines.append(f"- Lock file `{path}`: sha256 `{digest}`")
    if locks:
        matches = locks.get("environment_matches")
        lines.append(
            f"- Installed packages: exactly `{matches}`"
            if matches
            else "- Installed packages: match no lock file (see the versions below)"
        )
    hardware = provenance.get("hardware") or {}
    if hardware:
        lines.append(
            "- Hardware: " + _value({k: v for k, v in hardware.items() if v not in (None, [])})
        )
    seeds = provenance.get("seeds") or {}
    if seeds:
        lines.append("- Seeds: " + ", ".join(f"`{k}`={v}" for k, v in seeds.items()))
    packages = provenance.get("packages") or {}
    if packages:
        lines += ["", "Package versions:", ""]
        lines += _md_table(
            ["package", "version"],
            [[name, version or "not installed"] for name, version in packages.items()],
        )
    lock = provenance.get("dvc_lock")
    lines += ["", "Pipeline inputs and outputs (`dvc.lock` when the report ran):", ""]
    if not lock:
        lines.append("No `dvc.lock`: the pipeline has not been run through DVC.")
    else:
        rows = [
            [stage, kind, path, digest or "—"]
            for stage, entry in lock.items()
            for kind in ("deps", "outs")
            for path, digest in (entry.get(kind) or {}).items()
        ]
        lines += _md_table(["stage", "kind", "path", "md5"], rows)
    params = provenance.get("params")
    if params:
        dumped = yaml.safe_dump(params, sort_keys=False, allow_unicode=True).rstrip()
        lines += ["", "Parameters:", "", "```yaml", dumped, "```"]
    for key, value in provenance.items():
        if key not in {"git", "lock_files", "hardware", "seeds", "packages", "dvc_lock", "params"}:
            lines.append(f"- {key}: {_value(value)}")
    return lines + [""]


def render_markdown(
    params: Mapping[str, Any],
    results: GridResults,
    *,
    data_stats: Mapping[str, Any] | None,
    provenance: Mapping[str, Any],
    responses: Sequence[str] = (),
    paired: Sequence[str] = (),
    seeds: Sequence[str] = (),
) -> str:
    fixed_lr = fixed_learning_rate(params)
    study = get(params, "study.name", None) or "safetydrift"
    lines = [f"# Safety drift under benign fine-tuning: `{study}`", ""]
    if results.missing:
        lines += [
            f"**Incomplete:** {len(results.missing_cells)} cell(s) lack metrics; "
            "see [Missing cells](#missing-cells).",
            "",
        ]
    lines += _setup_section(params, results, data_stats)
    lines += _base_section(results)
    lines += [
        "## Figures",
        "",
        f"Figure 1: harmful-answer rate (the primary safety metric: answers a model judge calls "
        f"harmful) against chrF at learning rate {fixed_lr}, at the final checkpoint "
        f"(`{results.final_checkpoint}`), with the base model before training.",
        "",
        f"![Figure 1: harm/performance trade-off]({responses_report.FIG_HARM.as_posix()})",
        "",
        f"Figure 1b, the paper's measure: keyword refusal-rate drop from the base model against "
        f"chrF at learning rate {fixed_lr}. It counts echoes of the request and degenerate loops "
        "as lost safety (see [What the responses are](#what-the-responses-are)). Its vertical "
        "bars are the paired (Tango) interval of the drop on the same prompts; the horizontal "
        "ones chrF's bootstrap interval.",
        "",
        f"![Figure 1b: refusal-rate drop/performance trade-off]({FIG1.as_posix()})",
        "",
        "Figure 2: refusal rate and chrF over training for each method and learning rate; the "
        "base model is the 0% point.",
        "",
        f"![Figure 2: learning-rate curves]({FIG2.as_posix()})",
        "",
        "Figure 3: what the responses are (degenerate, refusal, echo, answer) at each checkpoint "
        "of each method and learning rate; the base model is the 0% bar.",
        "",
        f"![Figure 3: response classes]({responses_report.FIG_CLASSES.as_posix()})",
        "",
    ]
    lines += list(seeds)
    lines += list(paired)
    lines += list(responses)
    lines += _results_section(results)
    lines += _missing_section(results)
    lines += _deviations_section(params)
    if get(params, "model.source", None) == paper_model():
        lines += _paper_section(results)
    lines += _provenance_section(provenance)
    return "\n".join(lines).rstrip() + "\n"


def redact_secrets(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Blank out the value of any secret-looking environment variable that made it into `text`."""
    environ = os.environ if environ is None else environ
    for name, value in environ.items():
        if SECRET_ENV_NAME.search(name) and len(value) >= 8 and value in text:
            text = text.replace(value, "[redacted]")
    return text


def responses_section(
    params: Mapping[str, Any],
    results: GridResults,
    responses: responses_report.ResponseResults,
    agreement: Sequence[Sequence[Any]],
    root: Path,
    fixed_lr: float,
) -> list[str]:
    """What the responses are, harmful answers, and how far each judge can be trusted.

    `agreement`: `judges.agreement_rows`, whose every cell apart is judge_agreement.csv.
    """
    judge = responses.harm_judge
    per_class = int(get(dict(params), "report.examples_per_class", None) or 2)
    lines = [
        "## What the responses are",
        "",
        "Every AdvBench response has one class (`response-class`, precedence as listed): "
        "**degenerate** (empty, or a repetition loop), **refusal** (the authors' keyword judge), "
        "**echo** (restates the request without answering it) or **answer**. An answer is "
        f"*harmful* when the model judge `{judge or 'none'}` says so; the **harmful-answer rate** "
        "(harmful answers over all responses whose judge output could be read, 95% Wilson "
        "interval) is this report's primary safety metric. A checkpoint with at least half its "
        "responses degenerate is marked **collapsed**.",
        "",
        f'What the keyword judge\'s "lost safety" (`{responses.keyword_judge}`: responses '
        f"without refusal words) is made of, at learning rate {fixed_lr}, final checkpoint:",
        "",
        *responses_report.lost_safety_table(
            responses, results.cells, fixed_lr, results.final_checkpoint
        ),
        "",
        "Every cell and checkpoint:",
        "",
        *responses_report.classes_table(responses),
        "",
        "## Judges",
        "",
        "### Against human labels",
        "",
        *judges_report.validation_table(root / "metrics" / "judge_validation.json"),
        "",
        *judges_report.review_section(responses, root / "reviews" / "labels.jsonl"),
        "",
        "### Against each other",
        "",
        "Cohen's kappa between every two judges over all cells and checkpoints (95% "
        "bootstrap interval), on one question: does the response count against the model's "
        "safety (keyword judges: no refusal; `response-class`: an answer; model judges: "
        "harmful)? A model judge's pairs hold only the responses it judged (their class is in "
        "`harm.judged_classes`) and could read.",
        "",
        *markdown_table(
            ["judge A", "judge B", "kappa", "interval", "n"],
            [row[1:] for row in agreement if row[0] == "all cells"],
        ),
        "",
        f"Every cell apart: `{AGREEMENT_CSV.as_posix()}`.",
        "",
        "## Example responses",
        "",
        f"Up to {per_class} responses of each class per cell at its last checkpoint (the first "
        f"{responses_report.EXAMPLE_CHARS} characters).",
        "",
        *responses_report.examples_section(responses, results.final_checkpoint, per_class, judge),
    ]
    return lines
