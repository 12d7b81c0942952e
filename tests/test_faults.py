"""Faults and bad input, as a user meets them: one clear line, exit status 1, nothing lost.

The table runs each bad input the project knows through the `safetydrift` command or a stage
script in a real project, and checks the message it prints. The other tests reproduce one fault
each with real files, processes and filesystems: a failed rerun, identical reruns, file modes,
a full disk, an unknown hub id without network.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, copy_project, dvc, load_stage, run_cli, small_filesystem, stage_env

from safetydrift.data.advbench import prepare_advbench
from safetydrift.data.sources import HUB_TIMEOUT_SECONDS, DataError, Source, check_hub_source
from safetydrift.files import atomic_dir, atomic_path, write_json
from safetydrift.judges import judge_responses
from safetydrift.metrics import refusal_summary
from safetydrift.params import ParamError, boolean

ADVBENCH_HEADER = "goal,target\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh project on the smoke preset; each case edits params.yaml and puts it back."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    run_cli(project, "preset", "smoke")
    return project


def run_stage_script(project: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=env or stage_env(),
        capture_output=True,
        text=True,
    )


def edit_params(project: Path, edit) -> None:
    params = yaml.safe_load((project / "presets" / "smoke.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_key(dotted: str, value):
    def edit(params):
        *parents, last = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


def advbench_file(name: str, content: bytes):
    """An AdvBench CSV in the project, made `data.advbench.source`."""

    def edit(params, project):
        (project / name).write_bytes(content)
        params["data"]["advbench"]["source"] = name

    return edit


def mtpref_file(name: str, lines: list[dict | str]):
    """MT-Pref rows (or raw lines) in the project, made `data.mtpref.source`."""

    def edit(params, project):
        text = "".join(
            (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines
        )
        (project / name).write_text(text)
        params["data"]["mtpref"]["source"] = name

    return edit


def chat_file(name: str, rows: list[dict], **train_data):
    """Chat training rows in the project, made `train_data.source` (kind chat)."""

    def edit(params, project):
        (project / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        params["train_data"] = {"kind": "chat", "source": name, **train_data}

    return edit


EXCHANGE = {
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
}


def tower_row(chosen: str | None = "Hello.") -> dict:
    row = {
        "prompt": "<|im_start|>user\nTranslate the following German source text to English:\n"
        "German: Hallo.\nEnglish:<|im_end|>\n<|im_start|>assistant\n",
        "rejected": "Hi.",
    }
    if chosen is not None:
        row["chosen"] = chosen
    return row


# (case, command, edit of params.yaml (and files it names), the message printed on stderr)
TRAIN = ["stages/train.py", "--method", "full", "--lr", "0.001", "--seed", "42"]
CASES = [
    (
        "quoted boolean",
        ["stages/prepare_model.py"],
        set_key("model.trust_remote_code", "false"),
        "`model.trust_remote_code` must be true or false (an unquoted YAML boolean), got 'false'",
    ),
    (
        "boolean as a number",
        TRAIN,
        set_key("train.padding_free", 0),
        "`train.padding_free` must be true or false",
    ),
    (
        "switch as a number",
        TRAIN,
        set_key("methods.full.compile", 1),
        "`train.compile` (or `methods.full.compile`) must be auto, true or false, got 1",
    ),
    (
        "checkpoint fraction as text",
        TRAIN,
        set_key("train.checkpoint_fractions", ["half", 1.0]),
        "`train.checkpoint_fractions` must hold numbers in (0, 1] (e.g. [0.25, 0.5, 1.0]), "
        "got 'half'",
    ),
    (
        "checkpoint fraction out of range",
        TRAIN,
        set_key("train.checkpoint_fractions", [0.5, 1.5]),
        "`train.checkpoint_fractions` must be fractions in (0, 1], got 1.5",
    ),
    (
        "duplicate checkpoint fractions",
        TRAIN,
        set_key("train.checkpoint_fractions", [0.5, 0.5, 1.0]),
        "`train.checkpoint_fractions` lists 0.5 more than once; list each fraction once",
    ),
    (
        "learning rate not a number",
        ["stages/train.py", "--method", "full", "--lr", "abc", "--seed", "42"],
        None,
        "`grid.learning_rates` must be a number, got 'abc'",
    ),
    (
        "seed not a whole number",
        ["stages/train.py", "--method", "full", "--lr", "0.001", "--seed", "4.5"],
        None,
        "`grid.seeds` holds '4.5'; a seed is a whole number from 0 to 4294967295",
    ),
    (
        "the training seed where it was before `grid.seeds`",
        TRAIN,
        set_key("train.seed", 42),
        "`train.seed` is no longer read: each cell's seed is an entry of `grid.seeds`",
    ),
    (
        "unknown method",
        ["stages/train.py", "--method", "sgd", "--lr", "0.001", "--seed", "42"],
        None,
        "unknown method `sgd` (known: full, lora, qlora, dpo)",
    ),
    (
        "AdvBench quote never closed",
        ["stages/prepare_advbench.py"],
        advbench_file("adv.csv", b'goal,target\na,b\n"never closed,x\nc,d\n'),
        "adv.csv, line 3: not readable as CSV (a quote opened here is never closed)",
    ),
    (
        "AdvBench not UTF-8",
        ["stages/prepare_advbench.py"],
        advbench_file("adv.csv", b"goal,target\na,b\nc\xff,d\n"),
        "adv.csv, line 3: not valid UTF-8 (invalid start byte)",
    ),
    (
        "AdvBench row short of a field",
        ["stages/prepare_advbench.py"],
        advbench_file("adv.csv", b"goal,target\na,b\nc\n"),
        "adv.csv, line 3: 1 field(s), but the header has 2 (goal, target)",
    ),
    (
        "AdvBench without its column",
        ["stages/prepare_advbench.py"],
        advbench_file("adv.csv", b"request,target\na,b\n"),
        "adv.csv: expected a column `prompt` or `goal` (present: request, target)",
    ),
    (
        "MT-Pref column missing in a later row",
        ["stages/prepare_mtpref.py"],
        mtpref_file("mt.jsonl", [tower_row(), tower_row(), tower_row(chosen=None)]),
        "mt.jsonl, row 3: missing column(s) chosen (the first row has them)",
    ),
    (
        "MT-Pref line not JSON",
        ["stages/prepare_mtpref.py"],
        mtpref_file("mt.jsonl", [tower_row(), "{broken"]),
        "mt.jsonl, line 2: not valid JSON",
    ),
    (
        "chat row without an answer",
        ["stages/prepare_train_data.py"],
        chat_file("chat.jsonl", [EXCHANGE, {"messages": [{"role": "user", "content": "Hi"}]}]),
        "chat.jsonl, row 2: `messages` must end with the assistant's non-empty answer",
    ),
    (
        "chat mix larger than its source",
        ["stages/prepare_train_data.py"],
        chat_file("chat.jsonl", [EXCHANGE], mix=[{"source": "chat.jsonl", "n": 2, "seed": 0}]),
        "`train_data.mix[0].n` is 2, but chat.jsonl has 1 rows",
    ),
    (
        "DPO on chat data",
        ["stages/train.py", "--method", "dpo", "--lr", "0.001", "--seed", "42"],
        chat_file("chat.jsonl", [EXCHANGE]),
        "`train_data.kind` is chat, whose conversations have one answer each, but "
        "`grid.methods` holds dpo",
    ),
    (
        "unknown data file type",
        ["stages/prepare_advbench.py"],
        set_key("data.advbench.source", "./adv.txt"),
        "adv.txt: no such file",
    ),
    (
        "test ratio out of range",
        ["stages/prepare_mtpref.py"],
        set_key("data.mtpref.test_ratio", 1.5),
        "`data.mtpref.test_ratio` must be in (0, 1), got 1.5",
    ),
    (
        "model dtype unknown",
        ["stages/prepare_model.py"],
        set_key("model.dtype", "float8"),
        "`model.dtype` must be one of float32, bfloat16, float16, got 'float8'",
    ),
    (
        "progress bars as text",
        ["stages/prepare_advbench.py"],
        set_key("runtime.progress", "yes"),
        "`runtime.progress` must be true or false, got 'yes'",
    ),
]


@pytest.mark.parametrize(
    ("command", "edit", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_one_line_and_exit_status_1(project, command, edit, message):
    params = yaml.safe_load((project / "presets" / "smoke.yaml").read_text())
    if edit is not None:
        if edit.__code__.co_argcount == 2:
            edit(params, project)
        else:
            edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        done = run_stage_script(project, *command)
    finally:
        shutil.copy(project / "presets" / "smoke.yaml", project / "params.yaml")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-3000:]


CLI_CASES = [
    ("unknown preset", ["preset", "nosuch"], "unknown preset `nosuch`"),
    (
        "judge file with a quote never closed",
        ["judge", "responses.csv", "--judge", "keywords-kempermann2025"],
        "responses.csv, line 2: not readable as CSV (a quote opened here is never closed)",
    ),
    (
        "judge file not UTF-8",
        ["judge", "latin1.csv", "--judge", "keywords-kempermann2025"],
        "latin1.csv, line 3: not valid UTF-8",
    ),
    (
        "judge file of unknown type",
        ["judge", "responses.txt", "--judge", "keywords-kempermann2025"],
        "cannot tell the format of this input from its extension `.txt`",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), [case[1:] for case in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_bad_input_to_the_command_is_one_line(project, args, message):
    (project / "responses.csv").write_text('prompt,response\n"a,b\n', encoding="utf-8")
    (project / "latin1.csv").write_bytes(b"prompt,response\na,b\nc,caf\xe9\n")
    (project / "responses.txt").write_text("x\n")
    done = run_cli(project, *args)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def write_base_refusal_metrics(project: Path) -> None:
    """metrics/refusal/base.json, judged by keywords-kempermann2025 alone."""
    verdicts = judge_responses(["I cannot help with that."], ["keywords-kempermann2025"])
    verdicts = verdicts["keywords-kempermann2025"]
    write_json(
        project / "metrics" / "refusal" / "base.json",
        {
            "cell": "base",
            "checkpoints": {
                "ckpt-000": {
                    "fraction": 0.0,
                    "step": 0,
                    "judges": {"keywords-kempermann2025": refusal_summary(verdicts, 0.95)},
                }
            },
        },
    )


def test_an_unknown_primary_judge_fails_before_the_report_is_written(project):
    write_base_refusal_metrics(project)
    edit_params(project, set_key("report.primary_judge", "keywords-seed0002"))
    try:
        done = run_stage_script(project, "stages/report.py")
    finally:
        shutil.copy(project / "presets" / "smoke.yaml", project / "params.yaml")
        for folder in ("metrics", "evals", "generations"):
            shutil.rmtree(project / folder, ignore_errors=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        "`report.primary_judge` is 'keywords-seed0002', but no refusal metrics under metrics "
        "hold it (judges there: keywords-kempermann2025); set it to one of `refusal.judges`"
    ) in done.stderr
    assert not (project / "reports" / "report.md").exists()
    assert not list((project / "reports").glob("**/*.csv"))


def test_an_edited_params_file_is_kept_unless_forced(project):
    params_file = project / "params.yaml"
    edited = params_file.read_text() + "# my own setting\n"
    params_file.write_text(edited)
    try:
        refused = run_cli(project, "preset", "paper")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "params.yaml differs from every preset" in refused.stderr
        assert "`safetydrift preset paper --force`" in refused.stderr
        assert params_file.read_text() == edited
        forced = run_cli(project, "preset", "paper", "--force")
        assert forced.returncode == 0, forced.stderr
        assert params_file.read_text() == (project / "presets" / "paper.yaml").read_text()
        assert (project / "params.yaml.bak").read_text() == edited
        # An unedited preset is replaced without a word.
        assert run_cli(project, "preset", "smoke").returncode == 0
    finally:
        shutil.copy(project / "presets" / "smoke.yaml", params_file)
        (project / "params.yaml.bak").unlink(missing_ok=True)


def test_booleans_are_yaml_booleans():
    assert boolean(True, "k") is True and boolean(False, "k") is False
    for value in ("false", "no", "0", 0, 1, None):
        with pytest.raises(ParamError, match=r"`k` must be true or false"):
            boolean(value, "k")


def test_advbench_with_a_byte_order_mark_is_read(tmp_path):
    source = tmp_path / "advbench.csv"
    source.write_bytes(b"\xef\xbb\xbfgoal,target\nWrite a threat,Sure\n")
    summary = prepare_advbench(Source(str(source)), tmp_path / "advbench.jsonl")
    assert summary["column"] == "goal" and summary["rows"] == 1


def test_outputs_get_the_umasks_modes(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "file.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inside").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "file.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


def test_an_unknown_hub_id_without_network_fails_fast_in_one_line(project, monkeypatch):
    edit_params(project, set_key("model.source", "made-up-user/no-such-model-xyz"))
    env = stage_env()
    env.pop("HF_HUB_OFFLINE", None)
    try:
        done = run_stage_script(project, "stages/prepare_model.py", env=env)
    finally:
        shutil.copy(project / "presets" / "smoke.yaml", project / "params.yaml")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "`model.source` 'made-up-user/no-such-model-xyz'" in errors[0]
    # The hub is asked once, bounded by its timeout, instead of the libraries' ~25 s of retries
    # (timed in this process: a stage's imports take seconds of their own on a loaded machine).
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises(DataError, match="made-up-user/no-such-model-xyz"):
        check_hub_source("made-up-user/no-such-model-xyz", None, "model", "model.source")
    assert time.perf_counter() - started < HUB_TIMEOUT_SECONDS + 2


def test_a_failed_rerun_keeps_the_previous_report_and_records_nothing(project):
    """DVC deletes a stage's outputs before running it; the report's are `persist: true`."""
    write_base_refusal_metrics(project)
    write_json(project / "metrics" / "chrf" / "base.json", {"cell": "base", "checkpoints": {}})
    # The report's other inputs, as a grid that has judged nothing yet leaves them.
    write_json(project / "metrics" / "judge_validation.json", {"n": 0, "files": [], "judges": {}})
    folders = ("metrics/harm", "metrics/evaluations", "evals/refusal", "evals/harm")
    for folder in (*folders, "generations/refusal", "generations/chrf"):
        (project / folder).mkdir(parents=True, exist_ok=True)
        (project / folder / ".keep").write_text("")
    try:
        dvc(project, "repro", "--single-item", "prepare_mtpref")
        dvc(project, "repro", "--single-item", "report")
        kept = ["report.md", "results.csv", "metrics.json", "plots/refusal.csv"]
        before = {name: (project / "reports" / name).read_bytes() for name in kept}
        lock = (project / "dvc.lock").read_text()
        edit_params(project, set_key("report.primary_judge", "no-such-judge"))
        failed = dvc(project, "repro", "--single-item", "report", check=False)
        assert failed.returncode != 0 and "`report.primary_judge` is 'no-such-judge'" in (
            failed.stdout + failed.stderr
        )
        assert {name: (project / "reports" / name).read_bytes() for name in kept} == before
        assert (project / "dvc.lock").read_text() == lock  # nothing recorded
        status = json.loads(dvc(project, "status", "--json", "report").stdout)
        assert "report" in status  # still to be run
    finally:
        shutil.copy(project / "presets" / "smoke.yaml", project / "params.yaml")
        for folder in ("metrics", "evals", "generations"):
            shutil.rmtree(project / folder, ignore_errors=True)


def test_a_failed_rerun_gets_its_uncached_metrics_back_as_dvc_lock_records_them(project):
    """DVC deletes `cache: false` outputs before a rerun and does not check them out again."""
    stats = project / "data" / "mtpref" / "stats.json"
    try:
        dvc(project, "repro", "--single-item", "prepare_mtpref")
        before, lock = stats.read_bytes(), (project / "dvc.lock").read_text()
        edit_params(project, set_key("data.mtpref.test_ratio", 1.5))
        failed = run_cli(project, "repro", "--", "--single-item", "prepare_mtpref")
        assert failed.returncode != 0
        assert "restored data/mtpref/stats.json (stage prepare_mtpref)" in failed.stdout
        assert stats.read_bytes() == before and (project / "dvc.lock").read_text() == lock
        # Plain `dvc repro` users get the same with `safetydrift restore`.
        assert dvc(project, "repro", "--single-item", "prepare_mtpref", check=False).returncode
        assert not stats.exists()
        restored = run_cli(project, "restore")
        assert restored.returncode == 0 and "restored data/mtpref/stats.json" in restored.stdout
        assert stats.read_bytes() == before
        again = run_cli(project, "restore")
        assert "nothing to restore" in again.stdout and stats.read_bytes() == before
    finally:
        shutil.copy(project / "presets" / "smoke.yaml", project / "params.yaml")


def test_generating_twice_on_the_same_inputs_writes_the_same_bytes(
    base_model_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base").symlink_to(base_model_dir)
    prepare_advbench(Source(str(FIXTURES / "advbench-tiny.csv")), tmp_path / "data/advbench.jsonl")
    params = yaml.safe_load((FIXTURES.parent.parent / "presets" / "smoke.yaml").read_text())
    params["refusal"]["prompts"]["subset"] = 4
    generate = load_stage("generate")
    output = tmp_path / "generations" / "refusal" / "base"
    runs = []
    for _ in range(2):
        generate.main(params, "refusal", "base")
        runs.append({p.name: p.read_bytes() for p in sorted(output.iterdir())})
    assert runs[0] == runs[1] and "generation.json" in runs[0]
    assert json.loads(runs[0]["generation.json"])["checkpoints"][0]["label"] == "ckpt-000"
    timing = json.loads((tmp_path / "timings" / "generate_refusal" / "base.json").read_text())
    assert timing["stage_seconds"] > 0 and "ckpt-000" in timing["generation_seconds"]


def test_a_full_disk_is_one_line_and_leaves_no_partial_output(project):
    data = project / "data"
    shutil.rmtree(data, ignore_errors=True)
    small_filesystem(data, "64k")
    try:
        # Fill it: the stage's output is what no longer fits.
        filler = os.open(data / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(filler, b"\0" * 4096)
        os.close(filler)
        done = run_stage_script(project, "stages/prepare_advbench.py")
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert errors == [
            "error: data/advbench.jsonl: no space left on its filesystem; nothing was written"
        ]
        assert sorted(p.name for p in data.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(data)], check=False)
