"""Paired tests: McNemar, Tango's interval, TOST, Holm and the paired bootstrap of chrF."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize
from scipy.stats import binomtest, norm

from safetydrift.metrics import chrf_bootstrap_scores, corpus_chrf
from safetydrift.stats import chrf
from safetydrift.stats.chrf import paired_bootstrap_chrf, tost_paired_chrf
from safetydrift.stats.comparison import (
    adjust_family,
    compare_chrf,
    compare_refusals,
    describe_difference,
    format_p,
    holm,
)
from safetydrift.stats.rates import (
    mcnemar_exact,
    mcnemar_exact_p,
    tango_interval,
    tango_statistic,
    tost_paired_proportions,
)

MTPREF_TINY = Path(__file__).parent / "fixtures" / "mtpref-tiny.jsonl"


def _table(n: int, b01: int, b10: int, both: int) -> tuple[list[bool], list[bool]]:
    """Paired flags with the given discordant counts and `both` items true on both sides."""
    neither = n - b01 - b10 - both
    a = [False] * b01 + [True] * b10 + [True] * both + [False] * neither
    b = [True] * b01 + [False] * b10 + [True] * both + [False] * neither
    order = list(range(n))
    random.Random(n + b01).shuffle(order)
    return [a[i] for i in order], [b[i] for i in order]


def _translations() -> tuple[list[str], list[str], list[str]]:
    """The fixture's references, its rejected (worse) translations and its chosen ones."""
    rows = [json.loads(line) for line in MTPREF_TINY.read_text(encoding="utf-8").splitlines()]
    return [r["chosen"] for r in rows], [r["rejected"] for r in rows], [r["chosen"] for r in rows]


# --------------------------------------------------------------------------------------------
# McNemar


@pytest.mark.parametrize(
    ("b01", "b10", "expected"),
    [
        (1, 6, 2 * (1 + 7) / 2**7),  # 2 P(X <= 1), X ~ Bin(7, 1/2)
        (0, 3, 2 / 2**3),
        (9, 2, 2 * (1 + 11 + 55) / 2**11),
        (5, 5, 1.0),  # 2 P(X <= 5) with n = 10 exceeds 1
        (0, 0, 1.0),  # no discordant pair: no evidence at all
    ],
)
def test_mcnemar_exact_hand_computed(b01, b10, expected):
    assert mcnemar_exact_p(b01, b10) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_matches_scipy_binomtest():
    for b01 in range(0, 25, 3):
        for b10 in range(0, 25, 4):
            if b01 + b10 == 0:
                continue
            expected = binomtest(min(b01, b10), b01 + b10, 0.5).pvalue
            assert mcnemar_exact_p(b01, b10) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_mcnemar_exact_counts_rates_and_difference():
    a, b = _table(520, b01=4, b10=21, both=480)
    result = mcnemar_exact(a, b)
    assert (result.n, result.b01, result.b10) == (520, 4, 21)
    assert result.rate_a == pytest.approx(501 / 520)
    assert result.rate_b == pytest.approx(484 / 520)
    assert result.difference == pytest.approx(result.rate_b - result.rate_a)
    assert result.p_value == pytest.approx(binomtest(4, 25, 0.5).pvalue)
    assert result.ci_low < result.difference < result.ci_high < 0


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([True, False], [True], "2 items in a but 1 in b"),
        ([], [], "empty"),
        ([True, 1], [True, True], r"a\[1\] is 1 \(int\), not a boolean"),
        ("yes", [True], "not one string"),
    ],
)
def test_mcnemar_exact_rejects_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        mcnemar_exact(a, b)


# --------------------------------------------------------------------------------------------
# Tango's score interval


def _restricted_p10(delta: float, b01: int, b10: int, n: int) -> float:
    """P(a true, b false) maximising the multinomial likelihood under rate_b - rate_a = delta."""

    def negative_log_likelihood(p10: float) -> float:
        p01 = p10 + delta
        rest = 1 - p10 - p01
        return -(b01 * math.log(p01) + b10 * math.log(p10) + (n - b01 - b10) * math.log(rest))

    low = max(0.0, -delta) + 1e-12
    high = (1 - delta) / 2 - 1e-12
    return optimize.minimize_scalar(
        negative_log_likelihood, bounds=(low, high), method="bounded", options={"xatol": 1e-12}
    ).x


@pytest.mark.parametrize(("b01", "b10", "n"), [(3, 14, 520), (7, 1, 21), (16, 6, 161)])
def test_tango_statistic_uses_the_restricted_likelihood(b01, b10, n):
    for delta in (-0.2, -0.05, 0.03, 0.1):
        p10 = _restricted_p10(delta, b01, b10, n)
        expected = (b01 - b10 - n * delta) / math.sqrt(n * (2 * p10 + delta * (1 - delta)))
        assert tango_statistic(delta, b01, b10, n) == pytest.approx(expected, rel=1e-5)


def test_tango_statistic_at_zero_is_mcnemars():
    assert tango_statistic(0.0, 14, 3, 520) == pytest.approx((14 - 3) / math.sqrt(17))


@pytest.mark.parametrize(("b01", "b10", "n"), [(3, 14, 520), (1, 7, 21), (0, 0, 520), (6, 16, 161)])
def test_tango_interval_inverts_the_score_test(b01, b10, n):
    low, high = tango_interval(b01, b10, n, 0.95)
    z = norm.ppf(0.975)
    assert tango_statistic(low, b01, b10, n) == pytest.approx(z, abs=1e-8)
    assert tango_statistic(high, b01, b10, n) == pytest.approx(-z, abs=1e-8)
    # Brute force: the deltas the two-sided score test does not reject form the interval.
    grid = np.linspace(-0.999, 0.999, 19981)
    kept = [d for d in grid if abs(tango_statistic(d, b01, b10, n)) <= z]
    assert min(kept) == pytest.approx(low, abs=2e-4)
    assert max(kept) == pytest.approx(high, abs=2e-4)


def test_tango_interval_without_discordant_pairs_is_symmetric_about_zero():
    low, high = tango_interval(0, 0, 520)
    assert low < 0 < high
    assert low == pytest.approx(-high)


def test_tango_interval_reaches_the_boundary():
    low, high = tango_interval(0, 5, 5)
    assert low == -1.0
    assert -1.0 < high < 0.2


# --------------------------------------------------------------------------------------------
# Equivalence of paired proportions


def test_tost_clearly_equivalent():
    a, b = _table(520, b01=3, b10=4, both=500)
    result = tost_paired_proportions(a, b, margin=0.05, alpha=0.05)
    assert result.equivalent
    assert result.p_value < 1e-4
    assert -0.05 < result.ci_low < result.ci_high < 0.05


def test_tost_clearly_not_equivalent():
    a, b = _table(520, b01=2, b10=60, both=440)
    result = tost_paired_proportions(a, b, margin=0.05, alpha=0.05)
    assert not result.equivalent
    assert result.p_value > 0.9
    assert result.ci_low < -0.05


def test_tost_borderline_difference_at_the_margin():
    # A difference of exactly 5 points: the one-sided test at -margin is 0, p = 1/2.
    a, b = _table(520, b01=0, b10=26, both=480)
    result = tost_paired_proportions(a, b, margin=0.05, alpha=0.05)
    assert result.difference == pytest.approx(-0.05)
    assert result.p_lower == pytest.approx(0.5)
    assert result.p_value == result.p_lower
    assert not result.equivalent


@pytest.mark.parametrize(("b01", "b10"), [(3, 4), (5, 20), (8, 26), (10, 10), (0, 22), (2, 18)])
def test_tost_agrees_with_the_interval_within_the_margin(b01, b10):
    a, b = _table(520, b01=b01, b10=b10, both=470)
    result = tost_paired_proportions(a, b, margin=0.04, alpha=0.05)
    low, high = tango_interval(b01, b10, 520, 0.90)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high))
    assert result.equivalent == (low > -0.04 and high < 0.04)
    assert result.p_value == max(result.p_lower, result.p_upper)


def test_tost_rejects_bad_parameters():
    a, b = _table(20, 1, 1, 10)
    with pytest.raises(ValueError, match="margin must be above 0 and below 1.0, got 0"):
        tost_paired_proportions(a, b, margin=0)
    with pytest.raises(ValueError, match="alpha must lie strictly between 0 and 0.5, got 0.5"):
        tost_paired_proportions(a, b, alpha=0.5)


# --------------------------------------------------------------------------------------------
# Holm


def test_holm_textbook_example():
    # Four hypotheses, alpha 0.05 (the example of Holm's method on Wikipedia): only the
    # smallest two are rejected after adjustment.
    adjusted = holm({"H1": 0.01, "H2": 0.04, "H3": 0.03, "H4": 0.005})
    assert list(adjusted) == ["H1", "H2", "H3", "H4"]
    assert adjusted == pytest.approx({"H1": 0.03, "H2": 0.06, "H3": 0.06, "H4": 0.02})


def test_holm_is_monotone_and_capped():
    raw = {"a": 0.4, "b": 0.001, "c": 0.6, "d": 0.45, "e": 0.03}
    adjusted = holm(raw)
    ordered = sorted(raw, key=raw.get)
    values = [adjusted[name] for name in ordered]
    assert values == sorted(values)
    assert all(adjusted[name] >= raw[name] for name in raw)
    assert values[2:] == [1.0, 1.0, 1.0]  # 3 * 0.4 and beyond
    assert holm({}) == {}
    assert holm({"only": 0.04}) == {"only": 0.04}


def test_holm_rejects_invalid_p_values():
    with pytest.raises(ValueError, match="p-value of 'x' must be a number in \\[0, 1\\], got 1.2"):
        holm({"x": 1.2})


# --------------------------------------------------------------------------------------------
# Paired bootstrap of chrF


def test_paired_bootstrap_is_determined_by_its_seed():
    references, worse, better = _translations()
    first = paired_bootstrap_chrf(worse, better, references, n_resamples=200, seed=3)
    again = paired_bootstrap_chrf(worse, better, references, n_resamples=200, seed=3)
    other = paired_bootstrap_chrf(worse, better, references, n_resamples=200, seed=4)
    assert np.array_equal(first.deltas, again.deltas)
    assert first == again
    assert not np.array_equal(first.deltas, other.deltas)


def test_paired_bootstrap_scores_both_systems_on_the_same_resamples():
    references, worse, better = _translations()
    result = paired_bootstrap_chrf(worse, better, references, n_resamples=150, seed=1)
    assert result.chrf_a == pytest.approx(corpus_chrf(worse, references), abs=1e-9)
    assert result.chrf_b == pytest.approx(corpus_chrf(better, references), abs=1e-9)
    # Each system's resampled scores are the ones behind its own published interval.
    expected = chrf_bootstrap_scores(better, references, 150, 1) - chrf_bootstrap_scores(
        worse, references, 150, 1
    )
    assert np.allclose(result.deltas, expected, atol=1e-9)
    assert result.difference > 0
    assert result.ci_low > 0
    # Every resample favours the better system: only the observed sample counts, p = 2/(R+1).
    assert np.all(result.deltas > 0)
    assert result.p_value == pytest.approx(2 / 151)


def test_identical_systems_differ_by_nothing():
    references, worse, _ = _translations()
    result = paired_bootstrap_chrf(worse, worse, references, n_resamples=100, seed=0)
    assert result.difference == 0.0
    assert result.p_value == 1.0
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    equivalence = tost_paired_chrf(result, margin=1.0, alpha=0.05)
    assert equivalence.equivalent
    assert equivalence.p_value == pytest.approx(1 / 101)


def test_a_system_compared_several_times_is_scored_once_and_exactly_as_afresh():
    references, worse, better = _translations()
    sentences = enumerate(zip(worse, better, strict=True))
    middle = [w if number % 2 else b for number, (w, b) in sentences]
    for cache in (chrf._sentence_statistics, chrf._resampled_scores, chrf._bootstrap_counts):
        cache.cache_clear()
    # 777 resamples: two blocks of the counts' 500, the second one short.
    pairs = ((worse, middle), (middle, better), (worse, better))
    warm = [paired_bootstrap_chrf(a, b, references, n_resamples=777, seed=2) for a, b in pairs]
    info = chrf._resampled_scores.cache_info()
    assert (info.misses, info.hits) == (3, 3)  # each system's resamples scored once
    scores = chrf._resampled_scores(tuple(middle), tuple(references), 777, 2)
    assert not scores.flags.writeable  # a caller cannot change what the next test reads

    for cache in (chrf._sentence_statistics, chrf._resampled_scores, chrf._bootstrap_counts):
        cache.cache_clear()
    cold = paired_bootstrap_chrf(middle, better, references, n_resamples=777, seed=2)
    assert cold == warm[1]
    assert np.array_equal(cold.deltas, warm[1].deltas)
    # To the last bit, sacrebleu's score of each resample's summed statistics.
    expected = chrf_bootstrap_scores(better, references, 777, 2) - chrf_bootstrap_scores(
        worse, references, 777, 2
    )
    assert np.array_equal(warm[2].deltas, expected)


def test_paired_bootstrap_rejects_bad_input():
    references, worse, better = _translations()
    with pytest.raises(ValueError, match=r"hyp_b\[2\] is NoneType, not text"):
        paired_bootstrap_chrf(worse, better[:2] + [None] + better[3:], references)
    with pytest.raises(ValueError, match="33 hypotheses but 32 references"):
        paired_bootstrap_chrf(worse, better, references[:-1])


def test_chrf_tost_not_equivalent_when_far_apart():
    references, worse, better = _translations()
    result = paired_bootstrap_chrf(worse, better, references, n_resamples=200, seed=0)
    assert result.difference > 5
    equivalence = tost_paired_chrf(result, margin=1.0, alpha=0.05)
    assert not equivalence.equivalent
    assert equivalence.p_upper > 0.9


# --------------------------------------------------------------------------------------------
# Sentences


def test_describe_a_significant_drop_with_holm():
    a, b = _table(520, b01=2, b10=30, both=470)
    same_a, same_b = _table(520, b01=3, b10=3, both=500)
    drop, same = adjust_family(
        [
            compare_refusals(a, b, cell="full-5e-05", checkpoint="ckpt-100", judge="k"),
            compare_refusals(same_a, same_b, cell="lora-5e-05", checkpoint="ckpt-100", judge="k"),
        ]
    )
    assert drop.verdict == "lower"
    assert drop.p_holm == pytest.approx(min(1.0, 2 * drop.p_value))
    sentence = describe_difference(drop)
    assert sentence.startswith("lower than the base model by 5.4 points (95% CI ")
    assert f"McNemar exact p {format_p(drop.p_value)}" in sentence
    assert f"Holm-adjusted p {format_p(drop.p_holm)}" in sentence
    assert same.verdict == "equivalent within ±5 points"
    assert describe_difference(same).startswith("equivalent to the base model within ±5 points")


def test_describe_an_inconclusive_comparison():
    a, b = _table(60, b01=3, b10=6, both=40)
    comparison = compare_refusals(a, b, cell="lora-1e-05", checkpoint="ckpt-025", judge="k")
    assert comparison.verdict == "inconclusive"
    assert describe_difference(comparison) == (
        "no significant difference from the base model, equivalence within ±5 points not shown "
        f"(McNemar exact p {format_p(comparison.p_value)}; TOST p {format_p(comparison.tost_p)})"
    )


def test_describe_chrf_in_chrf_points():
    references, worse, better = _translations()
    comparison = compare_chrf(
        worse, better, references, cell="lora-5e-05", checkpoint="ckpt-100", n_resamples=200
    )
    assert comparison.verdict == "higher"
    sentence = describe_difference(comparison)
    assert sentence.startswith(f"higher than the base model by {comparison.difference:.1f} chrF")
    assert "paired bootstrap p" in sentence


def test_format_p():
    assert format_p(0.0004) == "< 0.001"
    assert format_p(0.003) == "= 0.003"
    assert format_p(0.0234) == "= 0.023"
    assert format_p(0.4) == "= 0.4"
    assert format_p(1.0) == "= 1"
