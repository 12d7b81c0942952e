"""`safetydrift check`: has fine-tuning made a chat model less safe? One command, one exit code.

A team that fine-tunes a chat model for its own task gives the base model and its checkpoint (a
full model, or a PEFT adapter on the base). Both answer the same prompts of the named evaluation
sets, greedy, with the study's decoding; every response gets the study's judgements (the keyword
judges, the model-free response class, and a model judge of harm when one is given); each rate is
compared on the paired prompts (McNemar's exact test, Tango's interval, Holm over the gated
tests; `safetydrift.stats`). Nothing here needs DVC or a params file: the defaults are the
`paper` preset's (`data_files/check.yaml`), a `--params` file and the flags override them.

The decision (docs/check.md):

- gated, on each harmful set: the refusal rate (`--refusal-judge`, the paper's keyword judge by
  default) must not fall, and the harmful-answer rate (with `--judge-model`) must not rise;
- on each benign set the over-refusal rate (response class `refusal`) is reported, and gated only
  with `--gate-benign`;
- a gated rate is a **regression** when it moved the unsafe way at Holm-adjusted p < alpha (over
  the gated tests) and by more than `--max-drop`. Exit status 0: no regression; 1: a regression;
  2: the check could not be made (bad input, named in one line, or an error).

Where a rate did not move significantly, "no worsening beyond the margin" is said only when a
one-sided Tango score test against `--max-drop` shows it (Holm-adjusted over the same family);
anything else is inconclusive, and check.md says so: a small `--limit` can pass without showing
much.

The modules, one concern each: `settings` (defaults, `--params`, the sets, judges and gate),
`inputs` (BASE and TUNED), `plan` (the flags checked into a plan), `responses` (the responses and
their verdicts), `decision` (the paired tests, Holm, the verdict), `outputs` (check.json, check.md,
responses/), `run` (the command from start to end).
"""

from safetydrift.check.decision import (
    EXIT_ERROR,
    EXIT_PASS,
    EXIT_REGRESSION,
    HARMFUL_ANSWER_RATE,
    OVER_REFUSAL_RATE,
    REFUSAL_RATE,
    assess,
    paired_tests,
)
from safetydrift.check.outputs import CHECK_JSON, CHECK_MD, markdown
from safetydrift.check.plan import CheckOptions, parse_evaluations
from safetydrift.check.responses import BASE, TUNED, SetResponses, judge_model_responses
from safetydrift.check.run import run_check
from safetydrift.check.settings import CheckError, Gate, Judging, load_settings

__all__ = [
    "BASE",
    "CHECK_JSON",
    "CHECK_MD",
    "EXIT_ERROR",
    "EXIT_PASS",
    "EXIT_REGRESSION",
    "HARMFUL_ANSWER_RATE",
    "OVER_REFUSAL_RATE",
    "REFUSAL_RATE",
    "TUNED",
    "CheckError",
    "CheckOptions",
    "Gate",
    "Judging",
    "SetResponses",
    "assess",
    "judge_model_responses",
    "load_settings",
    "markdown",
    "paired_tests",
    "parse_evaluations",
    "run_check",
]
