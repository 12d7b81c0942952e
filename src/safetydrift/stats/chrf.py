"""chrF, a corpus-level score, of two systems on the same sentences: the paired bootstrap of
their difference (Koehn 2004) and its percentile-bootstrap TOST.

Both systems are scored on the same resampled sentence indices (those of
`metrics.bootstrap_indices`), each resample from summed sentence statistics exactly as sacrebleu
scores a corpus.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from safetydrift.metrics import (
    _chrf_metric,
    _score,
    bootstrap_indices,
    chrf_statistics,
    counts_per_row,
)
from safetydrift.stats.equivalence import Equivalence, check_alpha, check_confidence, check_margin


@dataclass(frozen=True)
class PairedChrf:
    """Corpus chrF of two systems on the same sentences, and their paired-bootstrap difference."""

    n: int
    chrf_a: float
    chrf_b: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    n_resamples: int
    seed: int
    # chrF(b) - chrF(a) of every resample, in the order of `metrics.bootstrap_indices`.
    deltas: np.ndarray = field(repr=False, compare=False)


def paired_bootstrap_chrf(
    hyp_a: Sequence[str],
    hyp_b: Sequence[str],
    references: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedChrf:
    """chrF(b) - chrF(a) with a percentile interval and a two-sided paired-bootstrap p-value.

    The p-value doubles the share of resamples whose difference lies at or beyond 0 on the other
    side from the observed one, counting the observed sample too ((k + 1) / (R + 1)), capped at 1.
    """
    confidence = check_confidence(confidence)
    references = _texts(references, "references")
    hyp_a, hyp_b = _texts(hyp_a, "hyp_a"), _texts(hyp_b, "hyp_b")
    n_resamples, seed = int(n_resamples), int(seed)
    deltas = _resampled_scores(hyp_b, references, n_resamples, seed) - _resampled_scores(
        hyp_a, references, n_resamples, seed
    )
    metric = _chrf_metric()
    chrf_a = _score(metric, _sentence_statistics(hyp_a, references).sum(axis=0))
    chrf_b = _score(metric, _sentence_statistics(hyp_b, references).sum(axis=0))
    difference = chrf_b - chrf_a
    tail = (1 - confidence) / 2
    ci_low, ci_high = np.percentile(deltas, [100 * tail, 100 * (1 - tail)])
    return PairedChrf(
        n=len(references),
        chrf_a=chrf_a,
        chrf_b=chrf_b,
        difference=difference,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        confidence=confidence,
        p_value=_bootstrap_p(difference, deltas),
        n_resamples=int(n_resamples),
        seed=int(seed),
        deltas=deltas,
    )


def _texts(texts: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of strings, not one string")
    texts = tuple(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{index}] is {type(text).__name__}, not text")
    return texts


# The report compares each system several times (a checkpoint with the base model and with the
# other three methods' same checkpoint): its sentence statistics (about 0.35 s per 975 sentences,
# most of a comparison's time) and its resamples' scores are computed once. For the standin grid,
# 65 systems in 160 tests: 105.5 s -> 20.1 s (benchmarks/bench_report_chrf.py). An entry is a few
# hundred KB; 256 hold a grid of 64 checkpoints with room to spare.
@functools.lru_cache(maxsize=256)
def _sentence_statistics(hypotheses: tuple[str, ...], references: tuple[str, ...]) -> np.ndarray:
    statistics = chrf_statistics(hypotheses, references)
    statistics.flags.writeable = False
    return statistics


@functools.lru_cache(maxsize=256)
def _resampled_scores(
    hypotheses: tuple[str, ...], references: tuple[str, ...], n_resamples: int, seed: int
) -> np.ndarray:
    """sacrebleu's corpus chrF of each resample of `metrics.bootstrap_indices(n, n_resamples,
    seed)`: the same indices for every system, so two systems' scores pair resample by resample."""
    statistics = _sentence_statistics(hypotheses, references)
    metric = _chrf_metric()
    sums = _resample_sums(statistics, _bootstrap_counts(len(references), n_resamples, seed))
    scores = np.array([_score(metric, row) for row in sums])
    scores.flags.writeable = False
    return scores


@functools.lru_cache(maxsize=2)
def _bootstrap_counts(n: int, n_resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """How often each sentence is drawn in each resample of `bootstrap_indices(n, n_resamples,
    seed)`, in blocks of at most 500 resamples (float64, the operand of `_resample_sums`'s matrix
    products): the same for every system of a report."""
    indices = bootstrap_indices(n, n_resamples, seed)
    blocks = []
    for start in range(0, n_resamples, 500):
        block = counts_per_row(indices[start : start + 500], n).astype(np.float64)
        block.flags.writeable = False
        blocks.append(block)
    return tuple(blocks)


def _resample_sums(statistics: np.ndarray, counts: Sequence[np.ndarray]) -> np.ndarray:
    """Each resample's summed sentence statistics, `statistics[row].sum(axis=0)` for every row of
    the resamples' indices, as integers.

    Computed as (how often each sentence is drawn) x statistics, one matrix product per block of
    resamples (`_bootstrap_counts`) instead of one fancy-indexed sum per resample (3x faster at
    10,000 resamples of 818 sentences). The products are of integers well below 2**53, so float64
    holds them exactly and the sums are the same integers.
    """
    weights = statistics.astype(np.float64)
    return np.concatenate([np.rint(block @ weights).astype(np.int64) for block in counts])


def _bootstrap_p(difference: float, deltas: np.ndarray) -> float:
    if difference > 0:
        beyond = int(np.count_nonzero(deltas <= 0))
    elif difference < 0:
        beyond = int(np.count_nonzero(deltas >= 0))
    else:
        return 1.0
    return min(1.0, 2.0 * (beyond + 1) / (len(deltas) + 1))


def tost_paired_chrf(result: PairedChrf, margin: float = 1.0, alpha: float = 0.05) -> Equivalence:
    """Equivalence of two systems' chrF within +-`margin` chrF points, from a paired bootstrap.

    Each one-sided p-value is the share of resampled differences at or beyond that margin,
    (k + 1) / (R + 1); `ci_*` is the (1 - 2 alpha) percentile interval of the differences.
    """
    margin = check_margin(margin)
    alpha = check_alpha(alpha)
    resamples = len(result.deltas)
    p_lower = (int(np.count_nonzero(result.deltas <= -margin)) + 1) / (resamples + 1)
    p_upper = (int(np.count_nonzero(result.deltas >= margin)) + 1) / (resamples + 1)
    ci_low, ci_high = np.percentile(result.deltas, [100 * alpha, 100 * (1 - alpha)])
    p_value = max(p_lower, p_upper)
    return Equivalence(
        difference=result.difference,
        margin=margin,
        alpha=alpha,
        p_value=p_value,
        p_lower=p_lower,
        p_upper=p_upper,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        equivalent=p_value < alpha,
    )
