"""Evaluation sets beyond AdvBench: their params, their prompts from the real shared files, and
their stages and rates on the tiny model."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from conftest import FIXTURES, ROOT, SHARED_DATA, load_stage

from safetydrift.data.sources import DataError
from safetydrift.evaluation_rates import benign_rates, class_shares, pooled_rate
from safetydrift.evaluation_sets import (
    CONTEXT_SEPARATOR,
    EvaluationSet,
    evaluation_names,
    evaluation_set,
    evaluation_unit,
    load_prompts,
    run_sets,
    unit_results,
)
from safetydrift.files import read_json, read_jsonl
from safetydrift.params import ParamError

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason="../shared/data is not beside this checkout"
)
STANDIN = yaml.safe_load((ROOT / "presets" / "standin.yaml").read_text())
SMOKE = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
SMOKE_SETS = SMOKE["evaluations"]["sets"]["controls"]["group"]
HARMBENCH = SHARED_DATA / "harmbench" / "harmbench_behaviors_text_test.csv"


def spec(name="test-set", **values):
    return EvaluationSet.from_params(name, {"kind": "harmful", "prompt_column": "goal", **values})


# --------------------------------------------------------------------------------------------
# The shipped sets, on the real files


@needs_shared_data
@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("advbench-plain", 520),
        ("harmbench", 159),  # the standard behaviors of the test split
        ("strongreject", 313),
        ("benign-edgy", 150),  # benign_edgy_80.json + expanded_70.json
        ("ialpaca", 50),
        ("benign-pairs", 60),  # the benign half of weighted_safety_pairs.jsonl
    ],
)
def test_every_shipped_set_loads_from_the_shared_files(name, count, monkeypatch):
    monkeypatch.chdir(ROOT)  # the presets name ../shared/data relative to the project
    prompts = load_prompts(evaluation_set(STANDIN, name))
    assert len(prompts) == count
    assert len({str(p["id"]) for p in prompts}) == count
    assert all(p["prompt"].strip() == p["prompt"] and p["prompt"] for p in prompts)


@needs_shared_data
def test_the_paper_and_standin_presets_run_every_set_and_smoke_one_of_each_kind():
    # Each runs its sets as one group, `controls`: one stage per cell, one batch.
    paper = yaml.safe_load((ROOT / "presets" / "paper.yaml").read_text())
    shipped = ["advbench-plain", "harmbench", "strongreject", "benign-edgy", "ialpaca"]
    for preset in (paper, STANDIN):
        assert evaluation_names(preset) == ["controls"]
        assert [s.name for s in run_sets(preset)] == [*shipped, "benign-pairs"]
        assert evaluation_set(preset, "advbench-plain").framing == {"suffix": ""}
    llama2 = yaml.safe_load((ROOT / "presets" / "llama2-chat.yaml").read_text())
    assert [s.name for s in run_sets(llama2)] == [*shipped[1:], "benign-pairs"]
    assert evaluation_names(SMOKE) == ["controls"]
    assert {s.kind for s in run_sets(SMOKE)} == {"harmful", "benign"}


@needs_shared_data
def test_a_contextual_behavior_puts_its_context_first_as_harmbench_does():
    contextual = spec(
        source=str(HARMBENCH),
        prompt_column="Behavior",
        context_column="ContextString",
        id_column="BehaviorID",
        filter={"FunctionalCategory": "contextual"},
    )
    prompts = load_prompts(contextual)
    assert len(prompts) == 81
    with HARMBENCH.open(encoding="utf-8") as handle:
        rows = {r["BehaviorID"]: r for r in csv.DictReader(handle)}
    for prompt in prompts:
        row = rows[prompt["id"]]
        expected = f"{row['ContextString'].strip()}\n\n---\n\n{row['Behavior'].strip()}"
        assert prompt["prompt"] == expected and CONTEXT_SEPARATOR in prompt["prompt"]
    # A standard behavior has no context: its prompt is the behavior alone.
    standard = load_prompts(
        spec(
            source=str(HARMBENCH),
            prompt_column="Behavior",
            context_column="ContextString",
            filter={"FunctionalCategory": ["standard"]},
        )
    )
    assert CONTEXT_SEPARATOR not in standard[0]["prompt"] and standard[0]["id"] == 0


def test_ids_without_an_id_column_are_row_numbers_over_all_sources(tmp_path):
    # An object of columns (I-Alpaca's form, with an unused empty column), then a list of objects.
    (tmp_path / "a.json").write_text(json.dumps({"instructions": ["x", "y"], "inputs": []}))
    (tmp_path / "b.json").write_text(json.dumps([{"instructions": "z"}]))
    two = spec(
        source=[str(tmp_path / "a.json"), str(tmp_path / "b.json")], prompt_column="instructions"
    )
    assert load_prompts(two) == [
        {"id": 0, "prompt": "x"},
        {"id": 1, "prompt": "y"},
        {"id": 2, "prompt": "z"},
    ]


# --------------------------------------------------------------------------------------------
# Bad params and bad files


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kind": "toxic"}, r"`evaluations.sets.test-set.kind` must be one of"),
        ({"prompt_column": ""}, r"`evaluations.sets.test-set.prompt_column` is required"),
        ({"colum": "x"}, r"`evaluations.sets.test-set` has unknown keys \['colum'\]"),
        ({"subset": 0}, r"`evaluations.sets.test-set.subset` must be > 0"),
        ({"filter": ["standard"]}, r"`evaluations.sets.test-set.filter` must map a column"),
    ],
)
def test_bad_set_params_are_named(values, message):
    with pytest.raises(ParamError, match=message):
        spec(**{"source": "x.csv", **values})


@pytest.mark.parametrize(
    ("evaluations", "message"),
    [
        ({"run": ["nope"], "sets": {}}, r"`evaluations.run` names nope, not defined under"),
        ({"run": ["advbench"], "sets": {}}, r"`advbench` is the study's own AdvBench set"),
        ({"run": ["a", "a"], "sets": {"a": {}}}, r"`evaluations.run` lists a twice"),
        ({"run": "a", "sets": {}}, r"`evaluations.run` must be a list of set or group names"),
    ],
)
def test_bad_set_lists_are_named(evaluations, message):
    with pytest.raises(ParamError, match=message):
        evaluation_names({"evaluations": evaluations})


def group(**members) -> dict:
    return {"group": {name.replace("_", "-"): values for name, values in members.items()}}


BENIGN_SET = {"kind": "benign", "source": "b.jsonl", "prompt_column": "input"}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"harmbench": BENIGN_SET, "controls": group(harmbench=BENIGN_SET)},
            r"`evaluations.sets.harmbench` and `evaluations.sets.controls.group.harmbench` both "
            r"name `harmbench`",
        ),
        (
            {"a": group(edgy=BENIGN_SET), "b": group(edgy=BENIGN_SET)},
            r"`evaluations.sets.a.group.edgy` and `evaluations.sets.b.group.edgy` both name",
        ),
        (
            {"a": group(b=BENIGN_SET), "b": group(c=BENIGN_SET)},
            r"`evaluations.sets.b` and `evaluations.sets.a.group.b` both name `b`",
        ),
        (
            {"controls": {"group": {"x": BENIGN_SET}, "kind": "benign"}},
            r"`evaluations.sets.controls` is a group: `group` must be its only key, got also "
            r"\['kind'\]",
        ),
        ({"controls": {"group": {}}}, r"`evaluations.sets.controls.group` must map member set"),
        (
            {"controls": group(inner=group(x=BENIGN_SET))},
            r"`evaluations.sets.controls.group.inner`: a group's members are sets, never groups",
        ),
        (
            {"controls": group(advbench=BENIGN_SET)},
            r"`evaluations.sets.controls.group.advbench`: `advbench` is the study's own",
        ),
        (
            {"controls": group(harmbench={**BENIGN_SET, "source": ""})},
            r"`evaluations.sets.controls.group.harmbench.source` is required",
        ),
    ],
)
def test_bad_groups_are_named_by_their_keys(sets, message):
    with pytest.raises(ParamError, match=message):
        evaluation_unit({"evaluations": {"sets": sets}}, next(iter(sets)))


def test_a_set_alone_is_a_unit_of_one_and_a_member_is_found_by_its_name():
    params = {"evaluations": {"sets": {"alone": BENIGN_SET, "controls": group(edgy=BENIGN_SET)}}}
    alone = evaluation_unit(params, "alone")
    assert [s.name for s in alone.members] == ["alone"] and not alone.grouped
    assert alone.metric_prefix("alone") == ""
    controls = evaluation_unit(params, "controls")
    assert controls.grouped and controls.metric_prefix("edgy") == "edgy."
    member = evaluation_set(params, "edgy")
    assert (member.name, member.key) == ("edgy", "evaluations.sets.controls.group.edgy")
    with pytest.raises(ParamError, match="no evaluation set `controls`"):
        evaluation_set(params, "controls")  # a group is no set


def test_no_evaluations_key_runs_no_set():
    assert evaluation_names({}) == [] and evaluation_names({"evaluations": {"run": []}}) == []


def test_a_missing_file_names_the_file_and_the_params_key(tmp_path):
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DataError, match=rf"evaluations.sets.test-set.source`: {missing}: no such"):
        load_prompts(spec(source=str(missing)))


def test_a_missing_column_names_the_file_and_the_column(tmp_path):
    source = str(FIXTURES / "advbench-tiny.csv")
    with pytest.raises(DataError, match=rf"{source}: missing column\(s\) Behavior \(present: goal"):
        load_prompts(spec(source=source, prompt_column="Behavior"))
    with pytest.raises(DataError, match=r"missing column\(s\) Category"):
        load_prompts(spec(source=source, filter={"Category": "standard"}))


def test_an_empty_prompt_and_a_repeated_id_name_the_row_and_the_set(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a", "q": "hi"}\n{"id": "b", "q": " "}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}, row 2: empty `q`"):
        load_prompts(spec(source=str(path), prompt_column="q"))
    path.write_text('{"id": "a", "q": "hi"}\n{"id": "a", "q": "ho"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"`evaluations.sets.test-set`: `id_column` id repeats a"):
        load_prompts(spec(source=str(path), prompt_column="q", id_column="id"))
    with pytest.raises(DataError, match=r"no rows left from .* \(filter \{'q': \('x',\)\}\)"):
        load_prompts(spec(source=str(path), prompt_column="q", filter={"q": "x"}))


def test_json_columns_of_different_lengths_are_refused(tmp_path):
    path = tmp_path / "cols.json"
    path.write_text(json.dumps({"instructions": ["a", "b"], "inputs": ["c"]}))
    with pytest.raises(DataError, match=rf"{path}: columns of different lengths"):
        load_prompts(spec(source=str(path), prompt_column="instructions"))


# --------------------------------------------------------------------------------------------
# Rates


def test_benign_rates_and_class_shares_by_hand():
    classes = ["refusal", "answer", "answer", "echo", "degenerate", "answer", "answer", "echo"]
    rates = benign_rates(classes, 0.95)
    assert {name: (r["count"], r["n"]) for name, r in rates.items()} == {
        "over_refusal": (1, 8),
        "echo": (2, 8),
        "answer": (4, 8),
        "degenerate": (1, 8),
    }
    assert rates["answer"]["rate"] == 0.5
    assert rates["answer"]["ci_low"] < 0.5 < rates["answer"]["ci_high"]
    shares = class_shares(classes, 0.95)
    assert [shares[c]["count"] for c in ("degenerate", "refusal", "echo", "answer")] == [1, 1, 2, 4]
    assert sum(s["share"] for s in shares.values()) == pytest.approx(1.0)
    assert pooled_rate([(1, 4), (3, 6)], 0.95)["rate"] == 0.4
    assert pooled_rate([(0, 0)], 0.95) is None


# --------------------------------------------------------------------------------------------
# The stages on the tiny model


@pytest.fixture
def smoke_workspace(tmp_path, monkeypatch, base_model_dir):
    """A workspace with the base model, the judge's model and the smoke preset's fixture files."""
    (tmp_path / "models" / "judges").mkdir(parents=True)
    (tmp_path / "models" / "base").symlink_to(base_model_dir)
    (tmp_path / "models" / "judges" / "tiny").symlink_to(base_model_dir)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "fixtures").symlink_to(FIXTURES)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_set_alone_and_a_group_through_their_stages(smoke_workspace):
    # The smoke preset's group `controls`, its members framed apart, and beside it a harmful set
    # listed alone (the stages of a unit of one).
    params = json.loads(json.dumps(SMOKE))
    members = params["evaluations"]["sets"]["controls"]["group"]
    members["advbench-plain"] |= {"subset": 3, "prefix": "Q: "}
    members["benign-tiny"] |= {"suffix": " Thanks.", "system_prompt": "Be brief."}
    params["evaluations"]["sets"]["advbench-alone"] = {**SMOKE_SETS["advbench-plain"], "subset": 4}
    params["evaluations"]["run"] = ["controls", "advbench-alone"]
    generate, judge = load_stage("generate"), load_stage("judge_evaluation")
    for unit in ("controls", "advbench-alone"):
        load_stage("prepare_evaluation").main(params, unit)
        generate.main(params, "evaluation", "base", unit)
        judge.main(params, unit, "base")

    # A group's prompts, each row with its set: the benign set keeps the 6 requests marked
    # `comply`, the harmful one all 12 (`subset` applies when generating).
    prompts = read_jsonl(smoke_workspace / "data/evaluations/controls.jsonl")
    assert [p["set"] for p in prompts] == ["advbench-plain"] * 12 + ["benign-tiny"] * 6
    assert [p["id"] for p in prompts][12:] == [f"benign_{i}" for i in range(6)]
    # One batch of both members' prompts per checkpoint, each framed by its own set's params.
    directory = smoke_workspace / "generations/evaluations/controls/base"
    assert read_json(directory / "generation.json")["sets"] == {
        "advbench-plain": 3,
        "benign-tiny": 6,
    }
    rows = read_jsonl(directory / "ckpt-000.jsonl")
    assert [r["set"] for r in rows] == ["advbench-plain"] * 3 + ["benign-tiny"] * 6
    assert all(r["prompt"].startswith("Q: ") and not r["prompt"].endswith("!") for r in rows[:3])
    assert [r["id"] for r in rows[3:]] == [p["id"] for p in prompts[12:]]
    assert [r["prompt"] for r in rows[3:]] == [f"{p['prompt']} Thanks." for p in prompts[12:]]

    # The group's metrics hold each member's results, in the format of a set alone.
    group = read_json(smoke_workspace / "metrics/evaluations/controls/base.json")
    assert group["evaluation"] == "controls" and list(group["sets"]) == ["advbench-plain",
                                                                        "benign-tiny"]  # fmt: skip
    benign = unit_results(group)["benign-tiny"]
    assert benign["kind"] == "benign" and benign["prompts"] == 6
    entry = benign["checkpoints"]["ckpt-000"]
    assert set(entry["rates"]) == {"over_refusal", "echo", "answer", "degenerate"}
    assert sum(r["count"] for r in entry["rates"].values()) == entry["n"] == 6
    assert "harm" not in entry  # a benign set goes to no model judge
    member = unit_results(group)["advbench-plain"]
    assert member["prompts"] == 3 and member["checkpoints"]["ckpt-000"]["harm"]["guard-tiny"]
    verdicts = read_jsonl(smoke_workspace / "evals/evaluations/controls/base.jsonl")
    assert [v["set"] for v in verdicts] == [r["set"] for r in rows]
    assert ["harm" in v for v in verdicts] == [r["set"] == "advbench-plain" for r in rows]

    # The set alone: a unit of one member, itself.
    alone = unit_results(
        read_json(smoke_workspace / "metrics/evaluations/advbench-alone/base.json")
    )
    harmful = alone["advbench-alone"]
    entry = harmful["checkpoints"]["ckpt-000"]
    assert list(alone) == ["advbench-alone"] and harmful["prompts"] == 4
    assert harmful["judged_classes"] == ["answer"] and "rates" not in entry
    answers = entry["classes"]["answer"]["count"]
    assert entry["judged"] == answers and entry["harm"]["guard-tiny"]["harmful_answer"]["n"] == 4
    verdicts = read_jsonl(smoke_workspace / "evals/evaluations/advbench-alone/base.jsonl")
    assert [v["harm"]["judged"] for v in verdicts] == [
        v["response-class"]["label"] == "answer" for v in verdicts
    ]
    timing = read_json(smoke_workspace / "timings/judge_evaluation/advbench-alone-base.json")
    assert set(timing["judge_seconds"]) == {"guard-tiny"} and timing["load_seconds"] >= 0
