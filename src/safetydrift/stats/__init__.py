"""Paired comparisons of two evaluations of the same prompts, as a reviewer expects them.

Every checkpoint answers the same prompts as the base model, so differences are tested on the
pairs, never by comparing two intervals: overlapping 95% intervals are neither a test nor evidence
of equal rates.

Methods and their sources:

- Refusal rates: McNemar's exact test (the two-sided binomial test of the discordant pairs,
  McNemar 1947) for "is there a difference". The interval for the difference of the two rates
  is Tango's asymptotic score interval for paired proportions (Tango 1998, Stat Med 17:891-908),
  one of the intervals Fagerland, Lydersen & Laake (2014, Stat Med 33:2850-2875) recommend; its
  score statistic at a difference of 0 is McNemar's, and unlike a Wald interval it stays sensible
  with few discordant pairs (rates near 1, as the base model's 0.979).
- Equivalence of refusal rates: two one-sided Tango score tests against -margin and +margin
  (TOST, Schuirmann 1987). The TOST p-value is the larger one-sided p-value, and it is below
  alpha exactly when the (1 - 2 alpha) Tango interval lies inside (-margin, +margin).
- chrF, a corpus-level score: a paired bootstrap (Koehn 2004): both systems are scored on the
  same resampled sentence indices (those of `metrics.bootstrap_indices`, so each system's
  resampled scores are the ones behind its published interval), each resample from summed
  sentence statistics exactly as sacrebleu scores a corpus. Its equivalence test is the
  percentile-bootstrap TOST: the share of resampled differences at or beyond each margin.
- Several comparisons shown together: Holm's step-down adjustment (Holm 1979), which controls
  the family-wise error rate without assumptions on how the tests depend on each other.

The modules:

- `equivalence`: what a TOST returns (`Equivalence`) and the checks of the confidence levels,
  alphas and margins the tests take;
- `rates`: McNemar's exact test, Tango's score interval and the TOST of two paired rates;
- `chrf`: the paired bootstrap of corpus chrF and its TOST;
- `comparison`: one metric of one cell compared (`Comparison`), Holm's adjustment over a
  family, and the sentences the report and `safetydrift compare` print.

This file imports none of them: an importer names the module that holds what it uses, so a
stage depends on the statistics it runs and no other.
"""
