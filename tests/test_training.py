"""Each method on a tiny random model, on the CPU, through the real TRL and PEFT trainers."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, copy_project, stage_env
from safetensors.torch import load_file

from safetydrift.data.mtpref import TranslationPair, read_pairs
from safetydrift.models import load_model
from safetydrift.params import ParamError
from safetydrift.training.checkpoints import checkpoint_steps, total_steps
from safetydrift.training.launch import distributed_launch
from safetydrift.training.model import compile_blocks, use_compile
from safetydrift.training.run import train_cell
from safetydrift.training.settings import train_settings
from safetydrift.training.trainer import build_trainer

PARAMS = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())


def params_with(**train_overrides):
    params = copy.deepcopy(PARAMS)
    params["train"].update(train_overrides)
    return params


def train(method, pairs, base_model_dir, tmp_path, lr=1e-3, **overrides):
    settings = train_settings(params_with(**overrides), method, lr)
    return train_cell(settings, base_model_dir, pairs, tmp_path / method, tmp_path / "work")


@pytest.mark.parametrize("method", ["full", "lora", "dpo"])
def test_each_method_writes_four_checkpoints(method, base_model_dir, prepared_mtpref, tmp_path):
    pairs = read_pairs(prepared_mtpref / "train.jsonl")
    result = train(method, pairs, base_model_dir, tmp_path)
    assert result.steps == 10  # 20 rows at an effective batch of 2
    assert [c["step"] for c in result.checkpoints] == [3, 5, 8, 10]
    labels = sorted(p.name for p in (tmp_path / method).iterdir())
    assert labels == ["ckpt-025", "ckpt-050", "ckpt-075", "ckpt-100"]
    for checkpoint in result.checkpoints:
        assert checkpoint["loss"] is not None and checkpoint["learning_rate"] == 1e-3
    files = {p.name for p in (tmp_path / method / "ckpt-050").iterdir()}
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    if method == "lora":
        weights = load_file(tmp_path / method / "ckpt-050" / "adapter_model.safetensors")
        assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
        assert {k.split(".")[-3] for k in weights} == {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert "model.safetensors" not in files
    else:
        assert "model.safetensors" in files and "adapter_model.safetensors" not in files


def test_checkpoints_follow_the_papers_rounding():
    assert checkpoint_steps(591, [0.25, 0.5, 0.75, 1.0]) == {
        148: 0.25,
        296: 0.5,
        444: 0.75,
        591: 1.0,
    }
    with pytest.raises(ParamError, match="too few for checkpoints"):
        checkpoint_steps(3, [0.25, 0.5, 0.75, 1.0])


def test_loss_falls_on_a_set_it_can_overfit(base_model_dir, tmp_path):
    pair = TranslationPair("german", "Der Hund schläft.", "The dog sleeps.", "Dog sleep.")
    result = train("full", [pair] * 64, base_model_dir, tmp_path, lr=1e-2, warmup_ratio=0.0)
    losses = [c["loss"] for c in result.checkpoints]
    assert losses[-1] < 0.5 * losses[0], losses


def test_dpo_uses_the_rejected_answers(base_model_dir, tmp_path):
    same = [
        TranslationPair("german", f"Satz {i}.", f"Sentence {i}.", f"Sentence {i}.")
        for i in range(8)
    ]
    different = [
        TranslationPair(p.source_language, p.source_text, p.chosen, "Nonsense words here.")
        for p in same
    ]
    # With rejected == chosen the DPO margin is 0 for every pair, so the loss is log 2 at every
    # step whatever the weights are; real rejected answers give a margin, and the loss moves.
    unchanged = train("dpo", same, base_model_dir, tmp_path / "same", warmup_ratio=0.0)
    assert all(abs(c["loss"] - 0.693147) < 1e-5 for c in unchanged.checkpoints)
    moved = train("dpo", different, base_model_dir, tmp_path / "different", warmup_ratio=0.0)
    assert all(abs(c["loss"] - 0.693147) > 1e-4 for c in moved.checkpoints[1:])


def test_bad_settings_fail_before_training(base_model_dir, tmp_path):
    with pytest.raises(ParamError, match="unknown method `sgd`"):
        train_settings(PARAMS, "sgd", 1e-4)
    with pytest.raises(ParamError, match="must be > 0"):
        train_settings(PARAMS, "lora", 0)
    with pytest.raises(ParamError, match=r"effective_batch_size` \(8\) is not a multiple .* \(3\)"):
        train_settings(params_with(effective_batch_size=8, per_device_batch_size=3), "full", 1e-4)
    pairs = [TranslationPair("german", "a", "b", "c")] * 2
    with pytest.raises(ParamError, match="too few for checkpoints"):
        train("full", pairs, base_model_dir, tmp_path)
    params = copy.deepcopy(PARAMS)
    params["methods"]["lora"]["lora"]["target_modules"] = ["query_key_value"]
    settings = train_settings(params, "lora", 1e-3)
    with pytest.raises(ParamError, match=r"\['query_key_value'\], which the model does not have"):
        train_cell(settings, base_model_dir, pairs * 8, tmp_path / "x", tmp_path / "work")
    assert not (tmp_path / "x").exists()


def test_qlora_without_cuda_fails_with_a_clear_message(base_model_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA runs")
    pairs = [TranslationPair("german", "a", "b", "c")] * 16
    with pytest.raises(ParamError, match="qlora needs a CUDA GPU"):
        train("qlora", pairs, base_model_dir, tmp_path)


def test_total_steps_counts_the_last_partial_batch():
    settings = train_settings(PARAMS, "full", 1e-4)
    assert total_steps(21, settings) == 11


def test_a_killed_train_stage_leaves_nothing_done_and_reruns_cleanly(tmp_path):
    """SIGKILL in the middle of training: no output DVC would take as done; a rerun completes."""
    project = copy_project(tmp_path)
    params = yaml.safe_load((project / "presets" / "smoke.yaml").read_text())
    params["data"]["mtpref"]["source"] = str(project / "big.jsonl")
    fixture = (project / "tests" / "fixtures" / "mtpref-tiny.jsonl").read_text()
    (project / "big.jsonl").write_text(fixture * 12)  # enough steps to be caught halfway
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = stage_env()
    for stage in ("prepare_mtpref", "prepare_model"):
        subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "-q", stage], cwd=project, env=env, check=True
        )
    cell = f"full-{params['grid']['learning_rates'][0]}-{params['grid']['seeds'][0]}"
    stage = f"train@{cell}"
    # The stage's own TMPDIR (other test runs share /tmp), short enough for a Unix socket's path.
    private_tmp = Path(tempfile.mkdtemp(prefix="sd-"))
    env["TMPDIR"] = str(private_tmp)
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "-q", "--single-item", stage],
        cwd=project,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 240
    output = project / "models" / cell
    while not list((project / "models").glob(f".{cell}.*.partial/ckpt-025/checkpoint.json")):
        assert process.poll() is None, "training finished before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists()
    # The trainer's scratch was inside the output's temporary directory, not left in TMPDIR.
    assert not list(private_tmp.glob("safetydrift-trainer-*"))
    shutil.rmtree(private_tmp)
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", stage],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert stage in status.stdout  # DVC does not take the stage as done
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "-q", "--single-item", stage],
        cwd=project,
        env=env,
        check=True,
    )
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == [
        "ckpt-025",
        "ckpt-050",
        "ckpt-075",
        "ckpt-100",
    ]
    assert not list(Path(project / "models").glob("*.partial"))


def test_several_processes_need_as_many_gpus(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    params = params_with(num_processes=2, per_device_batch_size=1)
    settings = train_settings(params, "full", 1e-4)
    if torch.cuda.device_count() >= 2:
        command = distributed_launch(settings, ["stages/train.py", "--method", "full"])
        assert "--multi_gpu" in command and command[-3:] == ["stages/train.py", "--method", "full"]
    else:
        with pytest.raises(ParamError, match="`train.num_processes` is 2, but this machine has"):
            distributed_launch(settings, ["stages/train.py"])
    assert distributed_launch(train_settings(PARAMS, "full", 1e-4), ["stages/train.py"]) is None
    # accelerate's own switch for the CPU launches the processes without GPUs, DDP only.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    command = distributed_launch(settings, ["stages/train.py"])
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    fsdp = train_settings(params_with(num_processes=2, per_device_batch_size=1,
                                      distributed="fsdp"), "full", 1e-4)  # fmt: skip
    with pytest.raises(ParamError, match="`train.distributed` is fsdp.*FSDP needs GPUs"):
        distributed_launch(fsdp, ["stages/train.py"])


def test_two_processes_train_one_cell_over_gloo_with_the_same_effective_batch(
    base_model_dir, prepared_mtpref, tmp_path
):
    """The train stage relaunches itself under `accelerate launch` on two CPU processes (DDP over
    gloo): both ranks train, and each accumulates half as many micro-batches, so the optimizer
    steps and checkpoints are those of one process."""
    shutil.copytree(base_model_dir, tmp_path / "models" / "base")
    shutil.copytree(prepared_mtpref, tmp_path / "data" / "mtpref")
    one = train_settings(params_with(per_device_batch_size=1), "full", 1e-3)
    params = params_with(num_processes=2, per_device_batch_size=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage_args = ["--method", "full", "--lr", "1e-3", "--seed", "42"]
    env = stage_env()
    env["ACCELERATE_USE_CPU"] = "true"
    env.pop("LOCAL_RANK", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py"), *stage_args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((tmp_path / "models" / "full-0.001-42" / "training.json").read_text())
    assert info["processes"] == 2  # the process group both ranks joined
    assert (one.gradient_accumulation_steps, info["gradient_accumulation_steps"]) == (2, 1)
    rows = len(read_pairs(prepared_mtpref / "train.jsonl"))
    assert info["steps"] == total_steps(rows, one) == 10
    assert [c["step"] for c in info["checkpoints"]] == [3, 5, 8, 10]
    assert len(list((tmp_path / "models" / "full-0.001-42").glob("ckpt-*/model.safetensors"))) == 4


def test_a_diverged_run_fails_instead_of_writing_checkpoints(
    base_model_dir, prepared_mtpref, tmp_path
):
    pairs = read_pairs(prepared_mtpref / "train.jsonl")
    with pytest.raises(FloatingPointError, match="training diverged: the loss is"):
        train("full", pairs, base_model_dir, tmp_path, lr=1e8, warmup_ratio=0.0, weight_decay=0.0)


def test_compile_setting_is_validated_and_a_method_may_override_it():
    assert train_settings(params_with(compile="auto"), "full", 1e-4).compile == "auto"
    assert train_settings(params_with(compile=True), "dpo", 1e-4).compile == "on"
    params = params_with(compile=True)
    assert train_settings(params, "full", 1e-4).compile == "auto"  # smoke's methods.full says
    params["methods"]["lora"]["compile"] = False
    assert train_settings(params, "lora", 1e-4).compile == "off"
    with pytest.raises(ParamError, match="`train.compile` .* must be auto, true or false"):
        train_settings(params_with(compile="fast"), "dpo", 1e-4)


def test_compile_mode_and_padding_multiple_are_validated():
    settings = train_settings(params_with(compile_mode="reduce-overhead", pad_to_multiple_of=64),
                              "full", 1e-4)  # fmt: skip
    assert (settings.compile_mode, settings.pad_to_multiple_of) == ("reduce-overhead", 64)
    params = params_with(compile_mode="reduce-overhead")
    params["methods"]["lora"]["compile_mode"] = "default"
    assert train_settings(params, "lora", 1e-4).compile_mode == "default"
    with pytest.raises(ParamError, match="`train.compile_mode` .* must be one of default, reduce"):
        train_settings(params_with(compile_mode="fast"), "full", 1e-4)
    for bad in (0, -64, "64", True, 6.4):
        with pytest.raises(ParamError, match="`train.pad_to_multiple_of` must be a positive"):
            train_settings(params_with(pad_to_multiple_of=bad), "full", 1e-4)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_are_refused_for_compiled_lora(mode):
    params = params_with(compile=True, compile_mode=mode)
    for method in ("lora", "qlora"):
        params["methods"][method]["compile"] = True
        with pytest.raises(ParamError, match=f"`compile_mode: {mode}` .* crashes {method}"):
            train_settings(params, method, 1e-4)
        params["methods"][method]["compile"] = False  # eager LoRA ignores the mode
        assert train_settings(params, method, 1e-4).compile == "off"
    params = params_with(compile=True, compile_mode="max-autotune-no-cudagraphs")
    assert train_settings(params, "lora", 1e-4).compile_mode == "max-autotune-no-cudagraphs"


@pytest.mark.parametrize("method", ["full", "dpo"])
def test_padding_batches_to_a_multiple_leaves_the_loss_unchanged(
    method, base_model_dir, prepared_mtpref, tmp_path
):
    """Rounding batch lengths up (so that CUDA graphs meet a few shapes) only adds masked
    positions: the collated batches grow to a multiple of 64, the loss curve stays the same."""
    pairs = read_pairs(prepared_mtpref / "train.jsonl")[:8]
    padded_settings = train_settings(params_with(pad_to_multiple_of=64), method, 1e-3)
    trainer = build_trainer(padded_settings, base_model_dir, pairs, tmp_path / "work")
    batch = next(iter(trainer.get_train_dataloader()))
    lengths = [v.shape[-1] for k, v in batch.items() if k.endswith("input_ids")]
    assert lengths and all(length % 64 == 0 for length in lengths), lengths
    unpadded = train(method, pairs, base_model_dir, tmp_path / "unpadded")
    padded = train(method, pairs, base_model_dir, tmp_path / "padded", pad_to_multiple_of=64)
    assert padded.losses == pytest.approx(unpadded.losses, abs=1e-5)


def test_regional_compilation_compiles_every_decoder_block_in_place(base_model_dir):
    model = load_model(base_model_dir, dtype="float32")
    names_before = list(model.state_dict())
    assert compile_blocks(model) == model.config.num_hidden_layers
    blocks = [m for m in model.modules() if type(m).__name__ == "Qwen2DecoderLayer"]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert list(model.state_dict()) == names_before  # checkpoints keep their weight names
    auto = train_settings(PARAMS, "full", 1e-4)
    assert use_compile(auto) == torch.cuda.is_available()


def test_compiled_blocks_train_as_eager_ones(base_model_dir, prepared_mtpref, tmp_path):
    """The GPU default (compiled decoder blocks, and a compiled DPO reference model passed to
    TRL) follows the eager run's loss curve step for step, here in float32 on the CPU."""
    pairs = read_pairs(prepared_mtpref / "train.jsonl")[:8]
    eager = train("dpo", pairs, base_model_dir, tmp_path / "eager", compile=False)
    compiled = train("dpo", pairs, base_model_dir, tmp_path / "compiled", compile=True)
    assert len(compiled.losses) == len(eager.losses) == 4
    assert compiled.losses == pytest.approx(eager.losses, abs=1e-4)
    # Before the first update the policy is the reference model, so the DPO margin is 0.
    assert eager.losses[0] == pytest.approx(0.693147, abs=1e-5)


def test_compiled_lora_compiles_one_graph_for_all_blocks(base_model_dir, prepared_mtpref, tmp_path):
    """LoRA's frozen embeddings would give the first block an input without grad, and so a second
    compiled graph; the trainer makes that input require grad so that one graph serves all."""
    from torch._dynamo.utils import counters

    pairs = read_pairs(prepared_mtpref / "train.jsonl")[:8]
    runs = {}
    for compiled in (False, True):
        params = params_with(compile=compiled)
        params["methods"]["lora"]["compile"] = compiled  # the presets train LoRA eager
        # Compiled and eager dropout draw different masks; without dropout the curves must agree.
        params["methods"]["lora"]["lora"]["dropout"] = 0.0
        settings = train_settings(params, "lora", 1e-3)
        graphs_before = counters["stats"]["unique_graphs"]
        runs[compiled] = train_cell(
            settings, base_model_dir, pairs, tmp_path / f"{compiled}", tmp_path / "work"
        )
        graphs = counters["stats"]["unique_graphs"] - graphs_before
    assert graphs == 1
    assert runs[True].losses == pytest.approx(runs[False].losses, abs=1e-4)
