"""The generation engines against plain one-prompt-at-a-time greedy `generate` (CPU, float32)."""

import copy

import pytest
import torch
import yaml
from conftest import ROOT

from safetydrift.data.mtpref import read_pairs
from safetydrift.generation.checkpoints import ModelHolder, base_checkpoint, list_checkpoints
from safetydrift.generation.engines import HFEngine, eos_token_ids, split_at_stop
from safetydrift.generation.prompts import PromptSettings, encode_conversations
from safetydrift.generation.run import generate_for_checkpoints
from safetydrift.generation.settings import GenerationSettings
from safetydrift.models import ModelError, load_model, load_tokenizer
from safetydrift.training.run import train_cell
from safetydrift.training.settings import train_settings

PARAMS = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())


def reference_generate(model, tokenizer, prompt_ids, max_new_tokens):
    eos = eos_token_ids(tokenizer, model)
    outputs = []
    for ids in prompt_ids:
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        outputs.append(split_at_stop(out[0, len(ids) :].tolist(), eos))
    return outputs


@pytest.fixture(scope="module")
def trained_cells(base_model_dir, prepared_mtpref, tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    pairs = read_pairs(prepared_mtpref / "train.jsonl")
    for method in ("full", "lora"):
        settings = train_settings(PARAMS, method, 1e-2)
        train_cell(settings, base_model_dir, pairs, root / method, root / "work")
    return root


def conversations(prepared_mtpref):
    prompts = PromptSettings(suffix="!", system_prompt="Be brief.")
    return [prompts.conversation(p.source_text) for p in read_pairs(prepared_mtpref / "test.jsonl")]


@pytest.mark.parametrize("batch_size", [3, 64])
def test_batched_engine_equals_one_prompt_at_a_time(batch_size, base_model_dir, prepared_mtpref):
    tokenizer = load_tokenizer(base_model_dir)
    model = load_model(base_model_dir, dtype="float32").eval()
    prompt_ids = encode_conversations(tokenizer, conversations(prepared_mtpref))
    assert len({len(ids) for ids in prompt_ids}) > 1  # the batch really needs padding
    engine = HFEngine(
        tokenizer, GenerationSettings(max_new_tokens=12, batch_size=batch_size, dtype="float32")
    )
    assert engine.generate(model, prompt_ids) == reference_generate(
        model, tokenizer, prompt_ids, 12
    )


def test_checkpoints_are_copied_into_one_model_exactly(
    trained_cells, base_model_dir, prepared_mtpref
):
    """Weights and adapters copied into the resident base model act as a fresh load does."""
    from peft import PeftModel

    tokenizer = load_tokenizer(base_model_dir)
    prompt_ids = encode_conversations(tokenizer, conversations(prepared_mtpref))
    holder = ModelHolder(base_model_dir, "float32", "cpu")
    full = list_checkpoints(trained_cells / "full")
    for checkpoint in [full[0], full[-1]]:
        resident = holder.activate(checkpoint)
        fresh = load_model(checkpoint.path, dtype="float32").eval()
        assert reference_generate(resident, tokenizer, prompt_ids, 8) == reference_generate(
            fresh, tokenizer, prompt_ids, 8
        )
    holder = ModelHolder(base_model_dir, "float32", "cpu")
    lora = list_checkpoints(trained_cells / "lora")
    results = []
    for checkpoint in [*lora, lora[0]]:
        resident = holder.activate(checkpoint)
        fresh = PeftModel.from_pretrained(
            load_model(base_model_dir, dtype="float32"), str(checkpoint.path)
        ).eval()
        # Merged in memory: the same weights, to the bit, as merging into a fresh base model,
        # whatever adapter was merged before (the base weights are restored, not unmerged).
        unmerged_logits = fresh(torch.tensor([prompt_ids[0]])).logits
        fresh.merge_adapter()
        weights = zip(resident.state_dict().values(), fresh.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in weights)
        with torch.inference_mode():
            logits = resident(torch.tensor([prompt_ids[0]])).logits
        # ... and within float32 rounding of the adapter applied unmerged.
        torch.testing.assert_close(logits, unmerged_logits, rtol=1e-4, atol=1e-4)
        assert reference_generate(resident, tokenizer, prompt_ids, 8) == reference_generate(
            fresh, tokenizer, prompt_ids, 8
        )
        results.append(logits.sum().item())
    assert len(set(results)) == len(lora)  # each checkpoint really replaced the previous one
    assert results[0] == results[-1]


def test_generate_for_checkpoints_writes_the_study_fields(
    trained_cells, base_model_dir, prepared_mtpref
):
    convs = conversations(prepared_mtpref)
    checkpoints = [base_checkpoint(base_model_dir), *list_checkpoints(trained_cells / "lora")]
    settings = GenerationSettings(max_new_tokens=5, batch_size=4, dtype="float32")
    results = list(
        generate_for_checkpoints(
            base_model_dir, checkpoints, convs, list(range(len(convs))), settings, "cpu"
        )
    )
    assert [r.checkpoint.label for r in results] == [
        "ckpt-000",
        "ckpt-025",
        "ckpt-050",
        "ckpt-075",
        "ckpt-100",
    ]
    row = results[0].rows[0]
    assert set(row) == {"id", "prompt", "response", "new_tokens", "finish_reason"}
    assert row["prompt"].endswith("!") and 0 <= row["new_tokens"] <= 5
    assert row["finish_reason"] in {"stop", "length"}


def test_a_checkpoint_folder_with_neither_model_nor_adapter(tmp_path):
    (tmp_path / "ckpt-025").mkdir()
    with pytest.raises(ModelError, match="holds neither a model"):
        list_checkpoints(tmp_path)
    with pytest.raises(ModelError, match="no such checkpoint directory"):
        list_checkpoints(tmp_path / "missing")


def test_prompt_options_of_the_studies():
    rows = [{"id": i, "prompt": f"request {i}"} for i in range(50)]
    subset = PromptSettings(subset=10, subset_seed=1).select(rows)
    assert len(subset) == 10 and subset == PromptSettings(subset=10, subset_seed=1).select(rows)
    assert subset != PromptSettings(subset=10, subset_seed=2).select(rows)
    persona = PromptSettings(prefix="You are an obedient agent. ", suffix="!", system_prompt="sys")
    assert persona.conversation("Do it") == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "You are an obedient agent. Do it!"},
    ]
    params = copy.deepcopy(PARAMS)
    assert PromptSettings.from_params(params["refusal"]["prompts"]).suffix == "!"
