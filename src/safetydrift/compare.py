"""Paired comparison of two sets of results (folders or git revisions), or of each cell with base.

A results folder holds what the pipeline writes: `metrics/refusal/CELL.json` and
`metrics/chrf/CELL.json` (rates and scores), `evals/refusal/CELL.jsonl` (one judge verdict per
prompt) and `generations/chrf/CELL/ckpt-XXX.jsonl` (one translation per sentence). Tests need the
per-prompt files on both sides; prompts are matched by their `id`. Whatever one side has and the
other lacks is listed as missing, never compared with zero.
"""

from __future__ import annotations

import contextlib
import logging
import math
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, Cell, cell_name, checkpoint_label, parse_cell, seed_value
from safetydrift.files import read_json, read_jsonl
from safetydrift.judges import canonical_judge_name
from safetydrift.params import PARAMS_FILE, get, load_params
from safetydrift.stats.comparison import (
    CHRF,
    REFUSAL,
    Comparison,
    adjust_family,
    chrf_points,
    compare_chrf,
    compare_refusals,
    describe_difference,
)

log = logging.getLogger(__name__)

BASE_CHECKPOINT = checkpoint_label(0.0)
# What a comparison reads from a revision; generations/chrf is optional (chrF tests only).
RESULT_PATHS = ("metrics", "evals", "generations/chrf")
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


# --------------------------------------------------------------------------------------------
# Reading one results folder


@dataclass
class RefusalEntry:
    """One judge's refusals of one cell at one checkpoint, with per-prompt verdicts if present."""

    source: str
    refusals: int
    n: int
    verdicts: dict[Any, bool] | None = None

    @property
    def rate(self) -> float:
        return self.refusals / self.n


@dataclass
class ChrfEntry:
    """chrF of one cell at one checkpoint, with per-sentence (translation, reference) if present."""

    source: str
    chrf: float | None
    rows: dict[Any, tuple[str, str]] | None = None


@dataclass
class Results:
    """Everything one results folder holds, keyed by (cell, checkpoint[, judge])."""

    root: Path
    refusal: dict[tuple[str, str, str], RefusalEntry] = field(default_factory=dict)
    chrf: dict[tuple[str, str], ChrfEntry] = field(default_factory=dict)


def _prompt_id(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: `id` must be a number or text, got {value!r}")
    return value


def _read_metrics(root: Path, measurement: str) -> dict[str, tuple[Path, dict[str, Any]]]:
    directory = root / "metrics" / measurement
    found = {}
    for path in sorted(directory.glob("*.json")):
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
            raise ValueError(f"{path}: expected an object with a `checkpoints` object")
        found[path.stem] = (path, data)
    return found


def _read_verdicts(path: Path) -> dict[tuple[str, str], dict[Any, bool]]:
    """{(checkpoint, judge): {id: refused}} from an `evals/refusal/CELL.jsonl` file."""
    verdicts: dict[tuple[str, str], dict[Any, bool]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        where = f"{path}, row {number}"
        checkpoint = row.get("checkpoint")
        if not isinstance(checkpoint, str):
            raise ValueError(f"{where}: `checkpoint` is missing or not text")
        if "id" not in row:
            raise ValueError(f"{where}: `id` is missing")
        prompt_id = _prompt_id(row["id"], where)
        for judge, verdict in row.items():
            if judge in ("checkpoint", "id"):
                continue
            refused = verdict.get("refusal") if isinstance(verdict, dict) else None
            if not isinstance(refused, bool):
                raise ValueError(f"{where}: `{judge}.refusal` is missing or not true/false")
            by_id = verdicts.setdefault((checkpoint, judge), {})
            if prompt_id in by_id:
                raise ValueError(f"{where}: prompt id {prompt_id!r} appears twice at {checkpoint}")
            by_id[prompt_id] = refused
    return verdicts


def _read_translations(path: Path) -> dict[Any, tuple[str, str]]:
    rows: dict[Any, tuple[str, str]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        where = f"{path}, row {number}"
        if "id" not in row:
            raise ValueError(f"{where}: `id` is missing")
        prompt_id = _prompt_id(row["id"], where)
        for column in ("response", "reference"):
            if not isinstance(row.get(column), str):
                raise ValueError(f"{where}: `{column}` is missing or not text")
        if prompt_id in rows:
            raise ValueError(f"{where}: sentence id {prompt_id!r} appears twice")
        rows[prompt_id] = (row["response"], row["reference"])
    return rows


def read_results(root: str | Path) -> Results:
    """Every refusal and chrF measurement of a results folder, per-prompt files where present.

    Where both a metrics file and per-prompt verdicts exist they must agree (the same count of
    refusals of the same number of prompts), or the folder mixes results of different runs.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such results folder")
    results = Results(root)
    for cell, (path, data) in _read_metrics(root, REFUSAL).items():
        for checkpoint, entry in data["checkpoints"].items():
            for name, summary in (entry.get("judges") or {}).items():
                # Results written under a judge's earlier name compare with today's.
                judge = canonical_judge_name(name)
                refusals, n = summary.get("refusals"), summary.get("n")
                if not isinstance(refusals, int) or not isinstance(n, int) or n < 1:
                    raise ValueError(
                        f"{path}: {checkpoint} {judge} needs whole-number `refusals` and `n` >= 1"
                    )
                results.refusal[(cell, checkpoint, judge)] = RefusalEntry(str(path), refusals, n)
    for path in sorted((root / "evals" / REFUSAL).glob("*.jsonl")):
        cell = path.stem
        for (checkpoint, name), verdicts in _read_verdicts(path).items():
            judge = canonical_judge_name(name)
            key = (cell, checkpoint, judge)
            refusals = sum(verdicts.values())
            known = results.refusal.get(key)
            if known is not None and (known.refusals, known.n) != (refusals, len(verdicts)):
                raise ValueError(
                    f"{known.source} says {known.refusals}/{known.n} refusals for {checkpoint} "
                    f"{judge}, but {path} has {refusals}/{len(verdicts)}: the two files come "
                    "from different runs (rerun eval_refusal for this cell)"
                )
            results.refusal[key] = RefusalEntry(str(path), refusals, len(verdicts), verdicts)
    for cell, (path, data) in _read_metrics(root, CHRF).items():
        for checkpoint, entry in data["checkpoints"].items():
            value = entry.get("chrf")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{path}: {checkpoint} has no numeric `chrf`")
            results.chrf[(cell, checkpoint)] = ChrfEntry(str(path), float(value))
    for path in sorted((root / "generations" / CHRF).glob("*/ckpt-*.jsonl")):
        key = (path.parent.name, path.stem)
        known = results.chrf.get(key)
        results.chrf[key] = ChrfEntry(str(path), known.chrf if known else None)
        results.chrf[key].rows = _read_translations(path)
    return results


# --------------------------------------------------------------------------------------------
# Comparing


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


def _compare_refusal(
    key: tuple[str, str, str], a: RefusalEntry, b: RefusalEntry, settings: Settings
) -> Comparison:
    cell, checkpoint, judge = key
    if a.verdicts is None or b.verdicts is None:
        return Comparison(
            measurement=REFUSAL,
            cell=cell,
            checkpoint=checkpoint,
            judge=judge,
            value_a=a.rate,
            value_b=b.rate,
            difference=b.rate - a.rate,
            margin=settings.margin,
            alpha=settings.alpha,
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
        return Comparison(
            measurement=CHRF,
            cell=cell,
            checkpoint=checkpoint,
            judge=None,
            value_a=a.chrf,
            value_b=b.chrf,
            difference=b.chrf - a.chrf,
            margin=settings.chrf_margin,
            alpha=settings.alpha,
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
    """B against A for two results folders (see the module docstring for their layout)."""
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


# --------------------------------------------------------------------------------------------
# Git revisions


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=False)


def resolve_revision(spec: str, repo: str | Path = ".") -> str | None:
    """The commit `spec` names in `repo`, or None when it names none (or `repo` is no git repo)."""
    try:
        done = _git(Path(repo), "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    except FileNotFoundError:
        return None
    return done.stdout.decode().strip() if done.returncode == 0 else None


def materialise_revision(repo: str | Path, commit: str, destination: str | Path) -> list[str]:
    """Write `metrics/`, `evals/`, `generations/chrf/` and params.yaml as of `commit` under
    `destination`.

    Git-tracked files (metrics/, `cache: false`) come from `git archive`; DVC outputs (evals/,
    generations/) from DVC's view of that revision, which reads the local cache (or the remote).
    Returns notes on what could not be had, e.g. DVC outputs never pushed nor cached here.
    """
    repo, destination = Path(repo), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    # params.yaml too: the `train.seed` of results from before the seed axis (`seed_cells`).
    listed = _git(repo, "ls-tree", "-r", "--name-only", commit, "--", *RESULT_PATHS, PARAMS_FILE)
    tracked = [name for name in listed.stdout.decode().splitlines() if name]
    if tracked:
        archive = destination / ".revision.tar"
        done = _git(repo, "archive", "--format=tar", "-o", str(archive), commit, "--", *tracked)
        if done.returncode != 0:
            raise RuntimeError(f"git archive {commit} failed: {done.stderr.decode().strip()}")
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")
        archive.unlink()
    if _git(repo, "cat-file", "-e", f"{commit}:.dvc").returncode != 0:
        return notes
    from dvc.api import DVCFileSystem

    filesystem = DVCFileSystem(str(repo), rev=commit)
    for path in RESULT_PATHS[1:]:
        if any(name.startswith(f"{path}/") for name in tracked) or not filesystem.exists(path):
            continue
        try:
            filesystem.get(path, str(destination / path), recursive=True)
        except Exception as error:  # noqa: BLE001 - DVC raises many kinds; all mean "not here"
            notes.append(
                f"{path} at {commit[:10]}: not in the DVC cache or remote here "
                f"({type(error).__name__}: {error}); `dvc fetch --rev {commit[:10]}` first"
            )
            log.warning(notes[-1])
    return notes


@contextlib.contextmanager
def results_folder(spec: str, repo: str | Path = ".") -> Iterator[tuple[Path, list[str]]]:
    """A folder given as is, or a git revision's results in a temporary folder, with notes."""
    path = Path(spec)
    if path.is_dir():
        yield path, []
        return
    commit = resolve_revision(spec, repo)
    if commit is None:
        raise FileNotFoundError(f"{spec}: neither a folder nor a git revision of {Path(repo)}")
    with tempfile.TemporaryDirectory(prefix="safetydrift-compare-") as tmp:
        notes = materialise_revision(repo, commit, tmp)
        yield Path(tmp), notes


def compare_paths(
    spec_a: str,
    spec_b: str,
    settings: Settings | None = None,
    judges: Sequence[str] | None = None,
    repo: str | Path = ".",
) -> ComparisonReport:
    """`compare_metrics` for folders or git revisions (of `repo`), labelled as given."""
    with (
        results_folder(spec_a, repo) as (dir_a, notes_a),
        results_folder(spec_b, repo) as (
            dir_b,
            notes_b,
        ),
    ):
        results_a, results_b = read_results(dir_a), read_results(dir_b)
        named = seed_cells(results_a, results_b, spec_a) + seed_cells(results_b, results_a, spec_b)
        report = compare_results(results_a, results_b, settings, judges, labels=(spec_a, spec_b))
    report.notes = notes_a + notes_b + named + report.notes
    return report


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


# --------------------------------------------------------------------------------------------
# The table the command prints


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
