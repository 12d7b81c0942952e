"""MT-Pref's translation pairs: the rows translating the chosen languages kept as bare text
(by the Tower prompt, or the authors' pattern), split into train and test (the authors'
procedure, row for row, or `datasets`' split inside each language), and read back."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.data.sources import (
    DataError,
    Source,
    nonempty_text,
    read_source,
    require_columns,
    resolve_hub_revision,
)
from safetydrift.files import read_jsonl, write_json, write_jsonl

MTPREF_COLUMNS = ("prompt", "chosen", "rejected")

# The Tower/ChatML prompt of MT-Pref. The language named in the instruction is repeated before
# the source text and before the (empty) target, which is what makes the extraction unambiguous.
TOWER_PROMPT = re.compile(
    r"^\s*<\|im_start\|>user\n"
    r"Translate the following (?P<source>[^\n]+?) source text to (?P<target>[^\n]+?):\n"
    r"(?P=source): (?P<text>.*)\n"
    r"(?P=target):\s*<\|im_end\|>\n<\|im_start\|>assistant\n?\s*$",
    re.DOTALL,
)

# The seed authors' filter (their data-preparation script, quoted in issue 21): any of these
# source languages into English, found anywhere in the prompt with this pattern.
LATIN_SCRIPT = "latin-script"
AUTHORS_LATIN_SCRIPT_LANGUAGES = (
    "german", "spanish", "french", "portuguese", "italian", "dutch", "english", "catalan",
    "galician", "romanian", "polish", "czech", "slovak", "slovenian", "croatian", "bosnian",
    "serbian", "albanian", "latvian", "lithuanian", "estonian", "finnish", "hungarian", "danish",
    "swedish", "norwegian", "icelandic",
)  # fmt: skip
AUTHORS_PROMPT = re.compile(
    r"Translate the following (\w+) source text to English:\s*\1:\s*(.*?)\s*English:\s*"
    r"<\|im_end\|>",
    re.DOTALL | re.IGNORECASE,
)
SPLIT_METHODS = ("authors", "datasets")


@dataclass
class TranslationPair:
    source_language: str
    source_text: str
    chosen: str
    rejected: str

    def as_row(self) -> dict[str, str]:
        return {
            "source_language": self.source_language,
            "source_text": self.source_text,
            "chosen": self.chosen,
            "rejected": self.rejected,
        }


@dataclass
class FilterStats:
    rows_read: int = 0
    kept_by_language: Counter = field(default_factory=Counter)
    dropped_by_reason: Counter = field(default_factory=Counter)
    dropped_by_language: Counter = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return sum(self.kept_by_language.values())

    def drop(self, reason: str, language: str = "unknown") -> None:
        self.dropped_by_reason[reason] += 1
        self.dropped_by_language[language] += 1


def extract_source(prompt: str) -> tuple[str, str, str] | None:
    """(source language, target language, bare source text) of a Tower prompt, lower-cased names."""
    match = TOWER_PROMPT.match(prompt)
    if match is None:
        return None
    return match["source"].strip().lower(), match["target"].strip().lower(), match["text"].strip()


def filter_mtpref(
    rows: Sequence[Mapping[str, Any]],
    languages: Sequence[str],
    target_language: str,
    where: str,
) -> tuple[list[TranslationPair], FilterStats]:
    """Keep the rows translating one of `languages` into `target_language`, as bare text."""
    require_columns(rows, MTPREF_COLUMNS, where)
    wanted = {language.lower() for language in languages}
    target_language = target_language.lower()
    stats = FilterStats(rows_read=len(rows))
    kept: list[TranslationPair] = []
    for number, row in enumerate(rows, start=1):
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            raise DataError(f"{where}, row {number}: `prompt` is {type(prompt).__name__}, not text")
        parsed = extract_source(prompt)
        if parsed is None:
            stats.drop("prompt_not_in_tower_format")
            continue
        source_language, target, text = parsed
        if target != target_language:
            stats.drop("target_not_selected", source_language)
        elif source_language not in wanted:
            stats.drop("source_language_not_selected", source_language)
        elif not text:
            stats.drop("empty_source_text", source_language)
        elif not nonempty_text(row["chosen"]) or not nonempty_text(row["rejected"]):
            stats.drop("empty_chosen_or_rejected", source_language)
        else:
            kept.append(TranslationPair(source_language, text, row["chosen"], row["rejected"]))
            stats.kept_by_language[source_language] += 1
    if stats.dropped_by_reason["prompt_not_in_tower_format"] == len(rows):
        raise DataError(
            f"{where}: no prompt is in the Tower form 'Translate the following X source text to Y:"
            f"\\nX: ...\\nY:' (first prompt: {str(rows[0]['prompt'])[:120]!r})"
        )
    if not kept:
        raise DataError(
            f"{where}: nothing left after keeping source languages {sorted(wanted)} into "
            f"{target_language} (`data.mtpref.languages`, `data.mtpref.target_language`); "
            f"dropped: {dict(stats.dropped_by_reason)}"
        )
    return kept, stats


def resolve_languages(value: Any) -> list[str]:
    """`data.mtpref.languages`: `latin-script` (the authors' list) or a list of language names."""
    if value == LATIN_SCRIPT:
        return list(AUTHORS_LATIN_SCRIPT_LANGUAGES)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return [v.lower() for v in value]
    raise DataError(
        f"params.yaml: `data.mtpref.languages` must be {LATIN_SCRIPT} or a non-empty list of "
        f"language names, got {value!r}"
    )


def filter_mtpref_authors(
    rows: Sequence[Mapping[str, Any]], where: str
) -> tuple[list[TranslationPair], FilterStats]:
    """The authors' filter: their pattern anywhere in the prompt, a Latin-script source language.

    Nothing else is dropped (they kept empty texts too), so the rows are theirs, in their order.
    """
    require_columns(rows, MTPREF_COLUMNS, where)
    wanted = set(AUTHORS_LATIN_SCRIPT_LANGUAGES)
    stats = FilterStats(rows_read=len(rows))
    kept: list[TranslationPair] = []
    for number, row in enumerate(rows, start=1):
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            raise DataError(f"{where}, row {number}: `prompt` is {type(prompt).__name__}, not text")
        match = AUTHORS_PROMPT.search(prompt)
        if match is None:
            stats.drop("prompt_not_matched_into_english")
            continue
        language = match.group(1).lower()
        if language not in wanted:
            stats.drop("source_language_not_latin_script", language)
            continue
        kept.append(
            TranslationPair(language, match.group(2).strip(), row["chosen"], row["rejected"])
        )
        stats.kept_by_language[language] += 1
    if not kept:
        raise DataError(
            f"{where}: no prompt matches the authors' pattern 'Translate the following X source "
            f"text to English: X: ... English:<|im_end|>' with a Latin-script X "
            f"(first prompt: {str(rows[0]['prompt'])[:120]!r})"
        )
    return kept, stats


def split_authors(
    pairs: Sequence[TranslationPair], test_ratio: float, seed: int
) -> tuple[list[TranslationPair], list[TranslationPair]]:
    """The authors' split, step for step: one seeded generator; per language (in order of first
    appearance) a shuffle, the first `max(1, int(n * test_ratio))` rows test; then both shuffled."""
    if not 0 < test_ratio < 1:
        raise DataError(
            f"params.yaml: `data.mtpref.test_ratio` must be in (0, 1), got {test_ratio}"
        )
    generator = random.Random(seed)  # the same sequence as their `random.seed(seed)`
    by_language: dict[str, list[TranslationPair]] = {}
    for pair in pairs:
        by_language.setdefault(pair.source_language, []).append(pair)
    train: list[TranslationPair] = []
    test: list[TranslationPair] = []
    for rows in by_language.values():
        generator.shuffle(rows)
        n_test = max(1, int(len(rows) * test_ratio))
        test += rows[:n_test]
        train += rows[n_test:]
    generator.shuffle(train)
    generator.shuffle(test)
    return train, test


def split_per_language(
    pairs: Sequence[TranslationPair], languages: Sequence[str], test_ratio: float, seed: int
) -> tuple[list[TranslationPair], list[TranslationPair]]:
    """A seeded train/test split inside each language, as the paper did (`datasets` semantics)."""
    # Imported here: datasets takes ~0.6 s to import (measured), and only this split needs it,
    # not the authors' split nor `read_pairs`, which every training and generation stage calls.
    import datasets

    if not 0 < test_ratio < 1:
        raise DataError(
            f"params.yaml: `data.mtpref.test_ratio` must be in (0, 1), got {test_ratio}"
        )
    train: list[TranslationPair] = []
    test: list[TranslationPair] = []
    for language in (language.lower() for language in languages):
        subset = [p for p in pairs if p.source_language == language]
        if len(subset) < 2:
            if subset:
                raise DataError(
                    f"language {language}: {len(subset)} row, too few to split into train and test"
                )
            continue
        table = datasets.Dataset.from_list([p.as_row() for p in subset])
        parts = table.train_test_split(test_size=test_ratio, seed=seed)
        train += [TranslationPair(**row) for row in parts["train"].to_list()]
        test += [TranslationPair(**row) for row in parts["test"].to_list()]
    return train, test


def prepare_mtpref(
    source: Source,
    split: str,
    languages: Any,
    target_language: str,
    test_ratio: float,
    seed: int,
    out_dir: Path,
    split_method: str = "datasets",
) -> dict[str, Any]:
    """Write `train.jsonl`, `test.jsonl` and `stats.json` under `out_dir`; return the stats.

    `split` is the hub split read; `split_method` how it is divided: `authors` (their procedure,
    row for row) or `datasets` (`Dataset.train_test_split` inside each language)."""
    if split_method not in SPLIT_METHODS:
        hint = (
            " (the hub split read is now `data.mtpref.hub_split`)"
            if split_method == "train"
            else ""
        )
        raise DataError(
            f"params.yaml: `data.mtpref.split` must be one of {', '.join(SPLIT_METHODS)}, "
            f"got {split_method!r}{hint}"
        )
    language_list = resolve_languages(languages)
    rows = read_source(source, split)
    if languages == LATIN_SCRIPT:
        if target_language.lower() != "english":
            raise DataError(
                f"params.yaml: `data.mtpref.languages: {LATIN_SCRIPT}` is the authors' filter "
                f"into English; `data.mtpref.target_language` is {target_language!r}"
            )
        pairs, stats = filter_mtpref_authors(rows, where=source.location)
    else:
        pairs, stats = filter_mtpref(rows, language_list, target_language, where=source.location)
    if split_method == "authors":
        train, test = split_authors(pairs, test_ratio, seed)
    else:
        train, test = split_per_language(pairs, language_list, test_ratio, seed)
    summary = {
        **source.describe(),
        "resolved_revision": None
        if source.is_local
        else resolve_hub_revision(source.location, source.revision),
        "split": split,
        "rows_read": stats.rows_read,
        "rows_kept": stats.kept,
        "rows_dropped": sum(stats.dropped_by_reason.values()),
        "dropped_by_reason": dict(sorted(stats.dropped_by_reason.items())),
        "dropped_by_language": dict(sorted(stats.dropped_by_language.items())),
        "kept_by_language": dict(sorted(stats.kept_by_language.items())),
        "train_rows": len(train),
        "test_rows": len(test),
        "train_by_language": dict(sorted(Counter(p.source_language for p in train).items())),
        "test_by_language": dict(sorted(Counter(p.source_language for p in test).items())),
        "test_ratio": test_ratio,
        "seed": seed,
        "split_method": split_method,
        "languages": languages if languages == LATIN_SCRIPT else language_list,
    }
    write_jsonl(out_dir / "train.jsonl", (p.as_row() for p in train))
    write_jsonl(out_dir / "test.jsonl", (p.as_row() for p in test))
    write_json(out_dir / "stats.json", summary)
    return summary


def read_pairs(path: Path) -> list[TranslationPair]:
    rows = read_jsonl(path)
    require_columns(rows, ("source_language", "source_text", "chosen", "rejected"), str(path))
    return [
        TranslationPair(**{k: row[k] for k in TranslationPair.__dataclass_fields__}) for row in rows
    ]
