"""The study's two measurements with their uncertainty: refusal rate and corpus chrF.

Refusal rates get a Wilson score interval (a binomial proportion; at rates near 1, as for the
base model's 0.979, the normal-approximation interval would pass 1). chrF is a corpus-level
score, not a mean of sentence scores, so its interval is a percentile bootstrap over sentences
in which every resample is scored exactly as sacrebleu scores a corpus.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sacrebleu.metrics import CHRF

    from safetydrift.judges import Verdict


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(confidence)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `n` at two-sided `confidence`."""
    if not isinstance(successes, numbers.Integral) or not isinstance(n, numbers.Integral):
        raise ValueError(f"successes and n must be whole numbers, got {successes!r} and {n!r}")
    if n <= 0:
        raise ValueError(f"no interval for n={n}: a proportion needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..n={n}, got {successes}")
    confidence = _check_confidence(confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2_over_n = z * z / n
    denominator = 1 + z2_over_n
    center = (p + z2_over_n / 2) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z2_over_n / (4 * n)) / denominator
    # At 0 or n successes one bound is exactly 0 or 1; rounding would leave it a hair off.
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == n else min(1.0, center + half_width)
    return low, high


def refusal_summary(verdicts: Sequence[Verdict], confidence: float = 0.95) -> dict[str, Any]:
    """Refusal rate of one judge's verdicts, its Wilson interval, and how often each label came.

    `labels` counts every label given (for `regex-enais2025`: strong_refusal, weak_refusal,
    compliance), sorted by name, so a reviewer sees how a rate is made up.
    """
    n = len(verdicts)
    if n == 0:
        raise ValueError("no verdicts to summarise: a refusal rate needs at least one response")
    refusals = sum(1 for verdict in verdicts if verdict.refusal)
    ci_low, ci_high = wilson_interval(refusals, n, confidence)
    return {
        "refusal_rate": refusals / n,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "refusals": refusals,
        "n": n,
        "confidence": float(confidence),
        "labels": dict(sorted(Counter(verdict.label for verdict in verdicts).items())),
    }


def _check_pairs(
    hypotheses: Sequence[str], references: Sequence[str]
) -> tuple[list[str], list[str]]:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("hypotheses and references must be sequences of strings, not one string")
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: "
            "chrF pairs each hypothesis with the reference at the same position"
        )
    if not hypotheses:
        raise ValueError("no sentences to score: hypotheses and references are empty")
    for kind, texts in (("hypothesis", hypotheses), ("reference", references)):
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{kind} at index {index} is {type(text).__name__}, not text")
    return hypotheses, references


def _chrf_metric() -> CHRF:
    import sacrebleu
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    # The bootstrap leans on the same private methods sacrebleu's own paired bootstrap uses;
    # a sacrebleu that renamed them must fail loudly rather than score differently.
    needed = ("_extract_corpus_statistics", "_compute_score_from_stats")
    absent = [name for name in needed if not hasattr(metric, name)]
    if absent:
        raise RuntimeError(
            f"sacrebleu {sacrebleu.__version__} lacks CHRF.{', CHRF.'.join(absent)}, "
            "which the chrF bootstrap needs (known to work with sacrebleu 2.4 to 2.6)"
        )
    return metric


def _score(metric: CHRF, summed_statistics: np.ndarray) -> float:
    # Python ints, as sacrebleu's own sum gives, so the float arithmetic is the same to the bit.
    return float(metric._compute_score_from_stats(summed_statistics.tolist()).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF with its defaults (character order 6, word order 0, beta 2)."""
    from sacrebleu.metrics import CHRF

    hypotheses, references = _check_pairs(hypotheses, references)
    return float(CHRF().corpus_score(hypotheses, [references]).score)


def chrf_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Each sentence's chrF sufficient statistics, shape (n, 3 * orders), as integers.

    A corpus's chrF is a function of the column sums, so any resample's score comes from
    summing rows; no sentence is re-tokenised.
    """
    hypotheses, references = _check_pairs(hypotheses, references)
    metric = _chrf_metric()
    return np.asarray(metric._extract_corpus_statistics(hypotheses, [references]), dtype=np.int64)


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Sentence indices of every bootstrap resample, shape (n_resamples, n), fixed by `seed`."""
    if n < 1:
        raise ValueError(f"cannot resample {n} sentences")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def counts_per_row(values: np.ndarray, categories: int) -> np.ndarray:
    """How often each of `categories` values occurs in each row of `values` (shape (rows, n),
    values in [0, categories)): shape (rows, categories), one bincount for all rows."""
    offsets = values + categories * np.arange(len(values))[:, None]
    counts = np.bincount(offsets.ravel(), minlength=len(values) * categories)
    return counts.reshape(len(values), categories)


def chrf_bootstrap_scores(
    hypotheses: Sequence[str],
    references: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """corpus chrF of each resample of `bootstrap_indices(n, n_resamples, seed)`, in order."""
    statistics = chrf_statistics(hypotheses, references)
    return _bootstrap_scores(_chrf_metric(), statistics, n_resamples, seed)


def _bootstrap_scores(
    metric: CHRF, statistics: np.ndarray, n_resamples: int, seed: int
) -> np.ndarray:
    indices = bootstrap_indices(len(statistics), n_resamples, seed)
    return np.array([_score(metric, statistics[row].sum(axis=0)) for row in indices])


def chrf_summary(
    hypotheses: Sequence[str],
    references: Sequence[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Corpus chrF and a percentile bootstrap interval over sentences.

    The point estimate is sacrebleu's corpus chrF of all sentences. Each resample draws n
    sentences with replacement and is scored as a corpus in its own right.
    """
    confidence = _check_confidence(confidence)
    statistics = chrf_statistics(hypotheses, references)
    metric = _chrf_metric()
    scores = _bootstrap_scores(metric, statistics, n_resamples, seed)
    tail = (1 - confidence) / 2
    ci_low, ci_high = np.percentile(scores, [100 * tail, 100 * (1 - tail)])
    return {
        "chrf": _score(metric, statistics.sum(axis=0)),
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "n": len(statistics),
        "n_resamples": n_resamples,
        "confidence": confidence,
        "seed": seed,
    }
