"""The decoder replayed as CUDA graphs in training (`train.cuda_graphs`).

On the CPU the recording itself cannot run, so the trainer's graphed decoder is given a capture
that returns the module as recorded (it runs eager): that checks everything of ours around
torch's capture (which batches replay, the 4-D mask, the outputs TRL's loss reads) inside real
TRL training. The test with torch's real capture needs a CUDA GPU.
"""

import copy

import pytest
import torch
import yaml
from conftest import ROOT

from safetydrift.data.mtpref import read_pairs
from safetydrift.fastpaths.cudagraphs import GraphedBackbone, backbone_of, padded_causal_mask
from safetydrift.params import ParamError
from safetydrift.training.model import use_cuda_graphs
from safetydrift.training.settings import train_settings
from safetydrift.training.trainer import build_trainer

PARAMS = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())


def params_with(method_overrides=None, **train_overrides):
    params = copy.deepcopy(PARAMS)
    params["train"].update(train_overrides)
    for method, values in (method_overrides or {}).items():
        params["methods"].setdefault(method, {}).update(values)
    return params


def run_as_recorded(module, sample_args, pool):
    """Stands in for torch's capture on the CPU: the 'recording' runs the module itself."""
    return module


def trained_losses(method, pairs, base_model_dir, tmp_path, graphed, capture=run_as_recorded):
    settings = train_settings(params_with(pad_to_multiple_of=64), method, 1e-3)
    torch.manual_seed(settings.seed)
    trainer = build_trainer(settings, base_model_dir, pairs, tmp_path)
    graphs = None
    if graphed:
        graphs = GraphedBackbone(backbone_of(trainer.model), 2, capture=capture)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if graphs is not None:
        graphs.restore()
    return losses, graphs


def test_cuda_graph_setting_is_validated_before_any_work():
    absent = params_with()
    del absent["train"]["cuda_graphs"]
    assert train_settings(absent, "full", 1e-4).cuda_graphs == "off"
    assert train_settings(PARAMS, "full", 1e-4).cuda_graphs == "auto"
    on = params_with(cuda_graphs=True, pad_to_multiple_of=64)
    assert train_settings(on, "full", 1e-4).cuda_graphs == "on"
    assert train_settings(on, "lora", 1e-4).cuda_graphs == "on"
    assert train_settings(on, "qlora", 1e-4).cuda_graphs == "on"
    with pytest.raises(ParamError, match="for full, lora, qlora only.*methods.dpo"):
        train_settings(on, "dpo", 1e-4)
    off = params_with({"dpo": {"cuda_graphs": False}}, cuda_graphs=True, pad_to_multiple_of=64)
    assert train_settings(off, "dpo", 1e-4).cuda_graphs == "off"
    with pytest.raises(ParamError, match="`train.cuda_graphs` .* must be auto, true or false"):
        train_settings(params_with(cuda_graphs="yes"), "full", 1e-4)
    conflicts = {
        "pad_to_multiple_of. is null": {"pad_to_multiple_of": None},
        "padding_free. is true": {"padding_free": True},
        "gradient_checkpointing. is true": {"gradient_checkpointing": True},
        "num_processes. > 1": {"num_processes": 2, "effective_batch_size": 4},
        "compile_mode. is reduce-overhead": {"compile": True, "compile_mode": "reduce-overhead"},
    }
    for message, overrides in conflicts.items():
        params = params_with(**{"cuda_graphs": True, "pad_to_multiple_of": 64, **overrides})
        with pytest.raises(ParamError, match=message):
            train_settings(params, "full", 1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_a_gpu_auto_trains_eager_and_true_is_refused():
    auto = params_with(cuda_graphs="auto", pad_to_multiple_of=64)
    assert use_cuda_graphs(train_settings(auto, "full", 1e-4)) is False
    on = params_with(cuda_graphs=True, pad_to_multiple_of=64)
    with pytest.raises(ParamError, match="`train.cuda_graphs` is true, but this machine has no"):
        use_cuda_graphs(train_settings(on, "full", 1e-4))


def test_the_mask_is_causal_and_hides_padding():
    mask = padded_causal_mask(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]))
    assert mask.shape == (2, 1, 4, 4) and mask.dtype == torch.bool
    expected_second = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool
    )  # a padding query sees the real tokens and itself
    assert torch.equal(mask[1, 0], expected_second)
    assert torch.equal(mask[0, 0, :3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    left = padded_causal_mask(torch.tensor([[0, 0, 1, 1]]))
    assert left[0, 0].any(dim=-1).all()  # no empty row, whatever the padding side


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="equal to 1e-6 is a CPU check (deterministic kernels); on a GPU the real recording is "
    "compared with eager training within GPU noise (test_recorded_cuda_graphs_...)",
)
@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_graphed_decoder_trains_as_the_decoder_itself(
    method, base_model_dir, prepared_mtpref, tmp_path
):
    """Same examples, seed and settings: the loss curve is the eager decoder's, step for step
    (LoRA's dropout included); full batches go through the recordings, one per padded shape,
    and the epoch's last, partial batch runs eager."""
    pairs = read_pairs(prepared_mtpref / "train.jsonl")[:7]  # batches of 2, 2, 2, 1
    eager, _ = trained_losses(method, pairs, base_model_dir, tmp_path / "eager", graphed=False)
    replayed, graphs = trained_losses(method, pairs, base_model_dir, tmp_path / "g", graphed=True)
    assert len(replayed) == len(eager) == 4
    assert replayed == pytest.approx(eager, abs=1e-6)
    assert graphs.captures and all(
        c["shape"][0] == 2 and c["shape"][1] % 64 == 0 for c in graphs.captures
    )
    assert len({tuple(c["shape"]) for c in graphs.captures}) == len(graphs.captures)
    assert graphs.eager_calls == 1
    assert graphs.backbone.forward == graphs.eager_forward  # restored after training


def test_outside_training_the_decoder_runs_its_own_forward(base_model_dir):
    from safetydrift.models import load_model

    model = load_model(base_model_dir, dtype="float32")
    recorded = []
    graphs = GraphedBackbone(backbone_of(model), 2, capture=lambda m, a, p: recorded.append(a) or m)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    mask = torch.ones_like(ids)
    model.eval()
    model(input_ids=ids, attention_mask=mask)
    model.train()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(8).expand(2, 8))
    model(input_ids=ids[:1], attention_mask=mask[:1])
    assert recorded == []
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    assert len(recorded) == 1 and torch.isfinite(out.loss)
    graphs.restore()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("method", ["full", "lora"])
def test_recorded_cuda_graphs_train_as_eager_kernels(
    method, base_model_dir, prepared_mtpref, tmp_path
):
    from safetydrift.fastpaths.cudagraphs import capture_cuda_graphs

    pairs = read_pairs(prepared_mtpref / "train.jsonl")[:7]
    eager, _ = trained_losses(method, pairs, base_model_dir, tmp_path / "eager", graphed=False)
    replayed, graphs = trained_losses(
        method, pairs, base_model_dir, tmp_path / "g", graphed=True, capture=capture_cuda_graphs
    )
    assert replayed == pytest.approx(eager, abs=2e-2 if method == "lora" else 1e-3)
    assert graphs.captures and graphs.eager_calls == 1
