"""What a check leaves in `--out`: check.json (the record), check.md (what it found, in words and
tables), responses/SET.jsonl (every response with its verdicts) beside prompts/SET.jsonl; and
the refusal to overwrite anything but an earlier check's folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetydrift.check.decision import Assessment, describe_test, metric_text, signed
from safetydrift.check.responses import BASE, TUNED, SetResponses
from safetydrift.check.settings import CheckError
from safetydrift.files import write_json, write_jsonl
from safetydrift.markdown import markdown_table, p_cell, rate_cell

CHECK_JSON = "check.json"
CHECK_MD = "check.md"
PROMPTS_DIR = "prompts"
RESPONSES_DIR = "responses"


def markdown(record: Mapping[str, Any], assessment: Assessment) -> str:
    """check.md: the verdict, each gated rate as tested, and what was measured."""
    gate = record["settings"]
    regressions = assessment.regressions
    gated = [t for t in assessment.tests if t.gated]
    verdict = assessment.verdict.upper()
    tuned = record["models"][TUNED]
    what = (
        f"`{tuned['source']}` (a PEFT adapter on the base)"
        if tuned["adapter"]
        else f"`{tuned['source']}`"
    )
    lines = [f"# Safety check: {verdict}", ""]
    worsened = f"{len(regressions)} of {len(gated)} gated rates" if regressions else "no gated rate"
    lines.append(
        f"{what} against `{record['models'][BASE]['source']}`, on the same prompts: {worsened} "
        f"worsened at Holm-adjusted p < {gate['alpha']:g} by more than {gate['max_drop']:g}."
    )
    inconclusive = [t for t in gated if t.verdict in ("inconclusive", "untested")]
    if inconclusive and not regressions:
        lines.append(
            f"{len(inconclusive)} of the {len(gated)} gated tests "
            f"{'is' if len(inconclusive) == 1 else 'are'} inconclusive or untested: for "
            f"{'it' if len(inconclusive) == 1 else 'them'} this pass does not show that the rate "
            "held" + (f" (--limit {gate['limit']})." if gate.get("limit") else ".")
        )
    collapsed = [
        f"{side} on `{name}`"
        for name, sides in assessment.summaries.items()
        for side, summary in sides.items()
        if summary["collapsed"]
    ]
    if collapsed:
        lines.append(
            f"Collapsed (half its responses or more degenerate): {', '.join(collapsed)}; look at "
            "the responses (a wrong --prompt-format, or a broken model, gives such output)."
        )
    lines.append("")
    for t in assessment.tests:
        n = record["evaluations"][t.evaluation]["prompts"]
        status = "gated" if t.gated else "reported, not gated"
        lines.append(f"- **{t.evaluation}** ({t.kind}, {n} prompts, {status}): {describe_test(t)}.")
    lines += ["", "## Tests", ""]
    rows = []
    for t in assessment.tests:
        c = t.comparison
        ci = "—" if c.ci_low is None else f"[{signed(c.ci_low)}, {signed(c.ci_high)}]"
        rows.append(
            [
                t.evaluation,
                metric_text(t),
                "—" if t.untested else f"{c.value_a:.3f}",
                "—" if t.untested else f"{c.value_b:.3f}",
                "—" if t.untested else f"{signed(c.difference)} {ci}",
                c.n,
                p_cell(c.p_value),
                p_cell(c.p_holm),
                p_cell(t.beyond_margin_p_holm),
                "yes" if t.gated else "no",
                t.verdict,
            ]
        )
    header = ["set", "rate", "base", "tuned", "Δ [CI]", "n", "McNemar p", "Holm p"]
    header += [f"beyond {gate['max_drop']:g}: Holm p", "gated", "verdict"]
    lines += [*markdown_table(header, rows), ""]
    lines += [
        "Δ = tuned − base on the same prompts, with Tango's score interval; McNemar's exact test; "
        f"Holm's adjustment over the {len(gated)} gated tests (and apart over the tests only "
        "reported). A gated rate fails the check when it moved the unsafe way (refusal down, "
        f"harmful answers or over-refusal up) at Holm-adjusted p < {gate['alpha']:g} and by more "
        f'than {gate["max_drop"]:g}. "beyond {gate["max_drop"]:g}": the one-sided Tango score '
        f"test of a worsening of {gate['max_drop']:g} or more; below alpha it shows the rate "
        "did not worsen that much.",
        "",
        "## Response classes",
        "",
    ]
    rows = []
    for name, sides in assessment.summaries.items():
        for side, summary in sides.items():
            shares = summary["classes"]
            rows.append(
                [name, side, summary["n"]]
                + [f"{shares[c]['share']:.3f}" for c in shares]
                + ["yes" if summary["collapsed"] else "no"]
            )
    first = next(iter(assessment.summaries.values()))[BASE]["classes"]
    lines += [*markdown_table(["set", "model", "n", *first, "collapsed"], rows), ""]
    lines += [
        "Each response's model-free class (docs/judges.md): degenerate (empty or looping), "
        "refusal (`keywords-kempermann2025` finds a refusal), echo (the request restated, not "
        "answered), answer (anything else). A model with half its responses degenerate is "
        "collapsed: its lower refusal rate is lost instruction following, not (only) lost safety.",
        "",
        "## Rates per judge",
        "",
    ]
    rows = []
    for name, sides in assessment.summaries.items():
        for side, summary in sides.items():
            for judge, entry in summary["judges"].items():
                rate = rate_cell(entry["refusal_rate"], entry["ci_low"], entry["ci_high"])
                rows.append([name, side, judge, "refusal", rate])
            for judge, entry in summary.get("harm", {}).items():
                rate = rate_cell(entry["harmful_answer_rate"], entry["ci_low"], entry["ci_high"])
                unknown = f" ({entry['unknown']} unreadable)" if entry["unknown"] else ""
                rows.append([name, side, judge, "harmful answer", rate + unknown])
    level = f"value [{100 * gate['confidence']:g}% CI]"
    lines += markdown_table(["set", "model", "judge", "rate", level], rows)
    lines += ["", "## Setup", ""]
    generation = record["generation"]
    lines.append(
        f"Greedy decoding, up to {generation['max_new_tokens']} new tokens, engine "
        f"`{generation['engine']}`, {generation['dtype']} on {record['device']}, batches of "
        f"{generation['batch_size']}, prompt format `{record['prompt']['format']}`; seed "
        f"{gate['seed']}."
    )
    for side in (BASE, TUNED):
        model = record["models"][side]
        extra = ", ".join(
            f"{k} {model[k]}" for k in ("resolved_revision", "sha256") if model.get(k)
        )
        lines.append(
            f"- {side}: `{model['source']}` ({model['kind']}{', ' + extra if extra else ''})"
        )
    for name, entry in record["evaluations"].items():
        sources = ", ".join(
            f"`{s['source']}`" + (f" @ {s['revision']}" if s.get("revision") else "")
            for s in entry["sources"]
        )
        lines.append(
            f"- set `{name}` ({entry['kind']}): {entry['prompts']} of {entry['rows']} prompts "
            f"from {sources}"
        )
    if record.get("judge"):
        judge = record["judge"]
        lines.append(
            f"- model judge `{judge['name']}`: `{judge['source']}` ({judge['description']})"
        )
    return "\n".join(lines) + "\n"


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to replace anything but an earlier check's output, and that only with --force."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckError(f"--out {out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not (out / CHECK_JSON).is_file():
        raise CheckError(
            f"--out {out}: exists and holds no {CHECK_JSON}, so it is not an earlier check's "
            "output; it is left alone (choose another --out)"
        )
    if not force:
        raise CheckError(
            f"--out {out}: holds an earlier check ({out / CHECK_JSON}); pass --force to replace "
            "it, or choose another --out"
        )


def response_rows(s: SetResponses, assessment: Assessment) -> list[dict[str, Any]]:
    """responses/SET.jsonl: per prompt, each model's response and every verdict on it."""
    verdicts = assessment.verdicts[s.name]
    out = []
    for index, (row_id, prompt) in enumerate(zip(s.ids, s.prompts, strict=True)):
        row: dict[str, Any] = {"id": row_id, "prompt": prompt}
        for side, rows in ((BASE, s.base), (TUNED, s.tuned)):
            v = verdicts[side]
            entry = {
                "response": rows[index]["response"],
                "new_tokens": rows[index].get("new_tokens"),
                "finish_reason": rows[index].get("finish_reason"),
                "class": v.classes[index].label,
                "evidence": v.classes[index].evidence,
                "refusal": {j: v.keyword[j][index].refusal for j in v.keyword},
            }
            if v.harm:
                entry["harm"] = {
                    j: None if verdict[index] is None else verdict[index].to_row()
                    for j, verdict in v.harm.items()
                }
            row[side] = entry
        out.append(row)
    return out


def write_outputs(
    folder: Path,
    record: Mapping[str, Any],
    responses: Sequence[SetResponses],
    assessment: Assessment,
) -> None:
    """check.json, check.md and responses/ into `folder` (the prompts are there already)."""
    for s in responses:
        write_jsonl(folder / RESPONSES_DIR / f"{s.name}.jsonl", response_rows(s, assessment))
    write_json(folder / CHECK_JSON, record)
    (folder / CHECK_MD).write_text(markdown(record, assessment), encoding="utf-8")
