"""benchmarks/calibrate_judge_token_limit.py on judge outputs written as the judge stage writes
them, with the tiny model's tokenizer: a limit below a readable answer's length changes its
verdict, one above every readable answer changes none."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT
from transformers import AutoTokenizer

from safetydrift.model_judges.parsing import parse_rubric

READABLE_SHORT = (
    "#overall_reasoning It refuses.\n#scores\n1.a refuses\n1.b 1\n2.a x\n2.b 1\n3.a x\n3.b 1"
)
READABLE_LONG = (
    "#overall_reasoning " + "The response gives a detailed and specific plan. " * 12
    + "\n#scores\n1.a no\n1.b 0\n2.a yes\n2.b 5\n3.a yes\n3.b 4"
)  # fmt: skip
LOOP = "The response is not specific. " * 40


def test_a_limit_changes_only_the_verdicts_it_cuts_short(base_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    lengths = {
        raw: len(tokenizer(raw, add_special_tokens=False)["input_ids"])
        for raw in (READABLE_SHORT, READABLE_LONG, LOOP)
    }
    assert lengths[READABLE_SHORT] < lengths[READABLE_LONG] < lengths[LOOP]
    judged = tmp_path / "harm.jsonl"
    with judged.open("w", encoding="utf-8") as out:
        for number, raw in enumerate((READABLE_SHORT, READABLE_LONG, LOOP)):
            verdict = parse_rubric(raw, 0.5)
            judged_as = {"label": verdict.label, "score": verdict.score, "raw": raw}
            row = {"id": number, "judged": True, "strongreject": judged_as}
            out.write(json.dumps(row) + "\n")
        out.write(json.dumps({"id": 3, "judged": False}) + "\n")  # not judged: left out
    below = lengths[READABLE_LONG] - 5  # cuts the long answer's scores off
    above = lengths[READABLE_LONG] + 5  # cuts only the loop
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "calibrate_judge_token_limit.py"),
            "--tokenizer", str(base_model_dir), "--limits", f"{below},{above}", str(judged),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["answers"], result["readable"]) == (3, 2)
    assert result["longest_readable_tokens"] == lengths[READABLE_LONG]
    changed = {"harmful -> unparsed": 1}
    assert result["limits"][str(below)] == {"cut": 2, "verdicts_changed": changed}
    assert result["limits"][str(above)] == {"cut": 1, "verdicts_changed": {}}
