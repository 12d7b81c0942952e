"""QLoRA adapters evaluated on their 4-bit base (`generation.qlora_base: quantized`), on the CPU
with bitsandbytes' CPU backend: the base's layers, dequantized once at load, hold the 4-bit base's
values exactly; each adapter merged into them gives the logits of PEFT's unmerged adapter on
bitsandbytes' 4-bit layers within its kernels' rounding, adapter after adapter; and the static
engine generates with them."""

from __future__ import annotations

import pytest
import torch

from safetydrift.generation.checkpoints import Checkpoint, ModelHolder, bitsandbytes_runs_on_cpu
from safetydrift.generation.run import generate_for_checkpoints
from safetydrift.generation.settings import GenerationSettings
from safetydrift.models import load_model

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not bitsandbytes_runs_on_cpu(),
    reason="bitsandbytes has no backend for this machine",
)

QUANTIZATION = {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def adapters(base_model_dir, tmp_path_factory) -> list[Checkpoint]:
    """Two adapters on all seven projections, with B non-zero so that each one moves the logits."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("qlora")
    checkpoints = []
    for number, label in enumerate(("ckpt-050", "ckpt-100")):
        model = get_peft_model(
            load_model(base_model_dir, dtype="bfloat16"),
            LoraConfig(r=4, lora_alpha=16, target_modules=SEVEN, lora_dropout=0.0),
        )
        generator = torch.Generator().manual_seed(number)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        model.save_pretrained(root / label)
        step, fraction = number + 1, (number + 1) / 2
        checkpoints.append(Checkpoint(label, fraction, step, root / label, "adapter", QUANTIZATION))
    return checkpoints


def four_bit_reference(base_model_dir, adapter: Checkpoint):
    """What `qlora_base: quantized` ran before: PEFT's adapter on bitsandbytes' 4-bit layers."""
    from peft import PeftModel
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    base = load_model(base_model_dir, dtype="bfloat16", device="cpu", quantization_config=config)
    return PeftModel.from_pretrained(base, str(adapter.path)).eval()


def test_the_dequantized_base_is_the_4bit_base(base_model_dir, adapters):
    import bitsandbytes
    from bitsandbytes.functional import dequantize_4bit

    holder = ModelHolder(base_model_dir, "bfloat16", "cpu", QUANTIZATION)
    assert holder.quantized and not holder.keeps_4bit_layers
    assert not any(isinstance(m, bitsandbytes.nn.Linear4bit) for m in holder.model.modules())
    ids = torch.randint(0, 300, (3, 11), generator=torch.Generator().manual_seed(0))
    outputs = []
    for adapter in [*adapters, adapters[0]]:
        model = holder.activate(adapter)
        reference = four_bit_reference(base_model_dir, adapter)
        four_bit = {
            name.removesuffix(".base_layer"): module
            for name, module in reference.named_modules()
            if isinstance(module, bitsandbytes.nn.Linear4bit)
        }
        assert len(four_bit) == 7 * model.config.num_hidden_layers
        # The weights the adapter is merged into (and restored to before the next one) are the
        # 4-bit base's, to the bit.
        assert set(holder._pristine) == set(four_bit)
        for name, module in four_bit.items():
            weight = dequantize_4bit(module.weight.data, module.weight.quant_state)
            assert torch.equal(holder._pristine[name], weight.to(torch.bfloat16))
        with torch.inference_mode():
            logits = model(ids).logits
            # The same weights; bitsandbytes' fused 4-bit kernels round their sums differently,
            # and the merge rounds the delta into the weights where PEFT rounds it into outputs.
            torch.testing.assert_close(logits, reference(ids).logits, rtol=0.02, atol=0.02)
        outputs.append(logits.float())
    # Each adapter really replaced the last, by far more than the tolerance above.
    assert (outputs[0] - outputs[1]).abs().max() > 0.2 and torch.equal(outputs[0], outputs[2])


def test_a_compute_dtype_other_than_the_generation_dtype_keeps_the_4bit_layers(base_model_dir):
    holder = ModelHolder(base_model_dir, "float32", "cpu", QUANTIZATION)
    assert holder.keeps_4bit_layers


def test_the_static_engine_generates_on_the_dequantized_base(base_model_dir, adapters):
    conversations = [[{"role": "user", "content": text}] for text in ("Hello", "Say a long thing")]
    settings = GenerationSettings(
        backend="static", max_new_tokens=4, batch_size=2, dtype="bfloat16", qlora_base="quantized"
    )
    results = list(
        generate_for_checkpoints(base_model_dir, adapters, conversations, [0, 1], settings, "cpu")
    )
    assert [r.checkpoint.label for r in results] == ["ckpt-050", "ckpt-100"]
    assert {r.engine for r in results} == {"static"}
    assert all(len(r.rows) == 2 and r.rows[0]["new_tokens"] <= 4 for r in results)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_on_the_dequantized_base_match_eager_steps_for_every_adapter(
    base_model_dir, adapters
):
    # The graphs are captured on the first adapter and replayed on the next, whose merge goes into
    # the same weight tensors: against our eager loop on the same device, to the bit.
    from safetydrift.fastpaths.decoding import StaticCacheDecoder

    holder = ModelHolder(base_model_dir, "bfloat16", "cuda", QUANTIZATION)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 300, (n,), generator=generator).tolist() for n in (5, 9, 30, 31)]
    settings = dict(eos_token_ids=[2], pad_token_id=0, max_new_tokens=12, max_batch_size=4)
    graphs = None
    for adapter in [*adapters, adapters[0]]:
        model = holder.activate(adapter)
        graphs = graphs or StaticCacheDecoder(model, **settings)
        assert graphs.use_cuda_graphs
        want = StaticCacheDecoder(model, **settings, use_cuda_graphs=False).decode(prompts)
        assert graphs.decode(prompts) == want


@pytest.mark.parametrize(("size", "error"), [(0.003, 0.72), (0.01, 0.23)])
def test_a_merge_into_bf16_weights_loses_what_the_unmerged_bf16_forward_loses(size, error):
    """Why adapters are merged: a low-rank delta of `size` times the weights' scale, added to bf16
    weights, leaves the same error in its effect on a layer's outputs as PEFT's unmerged forward,
    which adds the delta's product to the bf16 output instead (the figures ModelHolder cites)."""
    generator = torch.Generator().manual_seed(0)
    n = 896  # the stand-in's hidden size
    weight = (torch.randn(n, n, generator=generator) * 0.02).bfloat16()
    delta = torch.randn(n, 8, generator=generator) @ torch.randn(8, n, generator=generator)
    delta = delta / delta.std() * 0.02 * size
    x = torch.randn(256, n, generator=generator).bfloat16()
    base = x.float() @ weight.float().T
    wanted = x.float() @ delta.T
    merged = (x @ (weight.float() + delta).bfloat16().T).float() - base
    unmerged = ((x @ weight.T).float() + wanted.bfloat16().float()).bfloat16().float() - base

    def effect_error(got):
        return ((got - wanted).norm() / wanted.norm()).item()

    assert effect_error(merged) == pytest.approx(error, abs=0.02)
    assert effect_error(unmerged) == pytest.approx(effect_error(merged), abs=0.02)
