"""Refusal-rate intervals and corpus chrF with its bootstrap, checked against sacrebleu itself."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sacrebleu.metrics import CHRF

from safetydrift.judges import COMPLIANCE, REFUSAL, STRONG_REFUSAL, WEAK_REFUSAL, Verdict
from safetydrift.metrics import (
    bootstrap_indices,
    chrf_bootstrap_scores,
    chrf_statistics,
    chrf_summary,
    corpus_chrf,
    refusal_summary,
    wilson_interval,
)


def _translations(n: int, seed: int = 7) -> tuple[list[str], list[str]]:
    """References and imperfect hypotheses: dropped, swapped and misspelt words."""
    rng = random.Random(seed)
    words = ("the", "train", "leaves", "at", "eight", "we", "eat", "noon", "house", "cat")
    references, hypotheses = [], []
    for _ in range(n):
        reference = [rng.choice(words) for _ in range(rng.randint(2, 14))]
        hypothesis = [w for w in reference if rng.random() > 0.25]
        if len(hypothesis) > 1 and rng.random() < 0.3:
            hypothesis[0], hypothesis[-1] = hypothesis[-1], hypothesis[0]
        hypothesis = [w + "e" if rng.random() < 0.1 else w for w in hypothesis]
        references.append(" ".join(reference).capitalize() + ".")
        hypotheses.append(" ".join(hypothesis))
    return hypotheses, references


HYPOTHESES, REFERENCES = _translations(120)


# --------------------------------------------------------------------------------------------
# Wilson interval


def test_wilson_known_value():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-5)
    assert high == pytest.approx(0.9433, abs=5e-5)


def test_wilson_bounds_at_zero_and_all():
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    # z^2 / (n + z^2) with z = 1.95996...
    assert high == pytest.approx(0.27753, abs=5e-5)
    assert wilson_interval(10, 10) == pytest.approx((1 - high, 1.0))
    assert wilson_interval(10, 10)[1] == 1.0


def test_wilson_is_symmetric_and_widens_with_confidence():
    low, high = wilson_interval(2, 10)
    mirrored_low, mirrored_high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((1 - mirrored_high, 1 - mirrored_low))
    narrow, wide = wilson_interval(509, 520, 0.90), wilson_interval(509, 520, 0.99)
    assert wide[0] < narrow[0] < 509 / 520 < narrow[1] < wide[1] <= 1.0


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "message"),
    [
        (0, 0, 0.95, "at least one trial"),
        (11, 10, 0.95, "must lie in 0..n=10"),
        (-1, 10, 0.95, "must lie in 0..n=10"),
        (5, 10, 1.0, "strictly between 0 and 1"),
        (5, 10, 0.0, "strictly between 0 and 1"),
        (5.5, 10, 0.95, "whole numbers"),
    ],
)
def test_wilson_rejects_bad_input(successes, n, confidence, message):
    with pytest.raises(ValueError, match=message):
        wilson_interval(successes, n, confidence)


# --------------------------------------------------------------------------------------------
# Refusal summary


def test_refusal_summary_counts_labels_and_interval():
    verdicts = (
        [Verdict(True, STRONG_REFUSAL, ("x",))] * 6
        + [Verdict(True, WEAK_REFUSAL, ("y",))] * 2
        + [Verdict(False, COMPLIANCE, ())] * 2
    )
    summary = refusal_summary(verdicts)
    assert summary["refusals"] == 8
    assert summary["n"] == 10
    assert summary["refusal_rate"] == 0.8
    assert (summary["ci_low"], summary["ci_high"]) == wilson_interval(8, 10)
    assert summary["labels"] == {COMPLIANCE: 2, STRONG_REFUSAL: 6, WEAK_REFUSAL: 2}


def test_refusal_summary_binary_labels_and_confidence():
    verdicts = [Verdict(True, REFUSAL, ("Sorry",)), Verdict(False, COMPLIANCE, ())]
    summary = refusal_summary(verdicts, confidence=0.9)
    assert summary["labels"] == {COMPLIANCE: 1, REFUSAL: 1}
    assert summary["confidence"] == 0.9
    assert (summary["ci_low"], summary["ci_high"]) == wilson_interval(1, 2, 0.9)


def test_refusal_summary_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one response"):
        refusal_summary([])


# --------------------------------------------------------------------------------------------
# corpus chrF


def test_corpus_chrf_is_sacrebleus_default_chrf():
    expected = CHRF().corpus_score(HYPOTHESES, [REFERENCES]).score
    assert corpus_chrf(HYPOTHESES, REFERENCES) == expected
    explicit = CHRF(char_order=6, word_order=0, beta=2).corpus_score(HYPOTHESES, [REFERENCES])
    assert corpus_chrf(HYPOTHESES, REFERENCES) == explicit.score
    assert 0 < expected < 100


def test_corpus_chrf_of_identical_text_is_100():
    assert corpus_chrf(REFERENCES, REFERENCES) == pytest.approx(100.0)


def test_chrf_statistics_sum_to_the_corpus_score():
    statistics = chrf_statistics(HYPOTHESES, REFERENCES)
    assert statistics.shape == (len(HYPOTHESES), 18)
    assert statistics.dtype == np.int64
    sums = statistics.sum(axis=0).tolist()
    assert CHRF()._compute_score_from_stats(sums).score == corpus_chrf(HYPOTHESES, REFERENCES)


@pytest.mark.parametrize(
    ("hypotheses", "references", "message"),
    [
        (["a", "b"], ["a"], "2 hypotheses but 1 references"),
        ([], [], "no sentences to score"),
        (["a", None], ["a", "b"], "hypothesis at index 1 is NoneType"),
        (["a", "b"], [None, "b"], "reference at index 0 is NoneType"),
        ("abc", ["a", "b", "c"], "not one string"),
    ],
)
def test_chrf_rejects_bad_input(hypotheses, references, message):
    with pytest.raises(ValueError, match=message):
        corpus_chrf(hypotheses, references)
    with pytest.raises(ValueError, match=message):
        chrf_summary(hypotheses, references, n_resamples=5)


# --------------------------------------------------------------------------------------------
# chrF bootstrap


def test_chrf_summary_point_estimate_is_exactly_sacrebleus():
    summary = chrf_summary(HYPOTHESES, REFERENCES, n_resamples=50)
    assert summary["chrf"] == CHRF().corpus_score(HYPOTHESES, [REFERENCES]).score
    assert summary["n"] == len(HYPOTHESES)
    assert summary["n_resamples"] == 50
    assert summary["seed"] == 0


def test_each_bootstrap_resample_is_scored_as_its_own_corpus():
    n_resamples, seed = 12, 3
    scores = chrf_bootstrap_scores(HYPOTHESES, REFERENCES, n_resamples=n_resamples, seed=seed)
    indices = bootstrap_indices(len(HYPOTHESES), n_resamples, seed)
    assert indices.shape == (n_resamples, len(HYPOTHESES))
    assert len(set(scores.tolist())) > 1
    for row, score in zip(indices, scores, strict=True):
        hypotheses = [HYPOTHESES[i] for i in row]
        references = [REFERENCES[i] for i in row]
        expected = CHRF().corpus_score(hypotheses, [references]).score
        assert score == pytest.approx(expected, abs=1e-9)


def test_chrf_interval_contains_the_estimate_and_follows_the_seed():
    first = chrf_summary(HYPOTHESES, REFERENCES, n_resamples=300, seed=11)
    again = chrf_summary(HYPOTHESES, REFERENCES, n_resamples=300, seed=11)
    other = chrf_summary(HYPOTHESES, REFERENCES, n_resamples=300, seed=12)
    assert first == again
    assert first["ci_low"] < first["chrf"] < first["ci_high"]
    assert (other["ci_low"], other["ci_high"]) != (first["ci_low"], first["ci_high"])
    assert other["chrf"] == first["chrf"]


def test_chrf_interval_narrows_with_more_sentences():
    small = chrf_summary(*_translations(30, seed=1), n_resamples=300)
    large = chrf_summary(*_translations(600, seed=1), n_resamples=300)
    assert large["ci_high"] - large["ci_low"] < small["ci_high"] - small["ci_low"]


def test_chrf_interval_widens_with_confidence():
    narrow = chrf_summary(HYPOTHESES, REFERENCES, n_resamples=300, confidence=0.8)
    wide = chrf_summary(HYPOTHESES, REFERENCES, n_resamples=300, confidence=0.99)
    assert wide["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < wide["ci_high"]


def test_bootstrap_rejects_no_resamples():
    with pytest.raises(ValueError, match="n_resamples must be at least 1"):
        chrf_summary(HYPOTHESES, REFERENCES, n_resamples=0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        chrf_summary(HYPOTHESES, REFERENCES, confidence=95)
