"""StaticCacheDecoder against plain one-prompt-at-a-time greedy `generate` (float32)."""

from collections import Counter

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from safetydrift.fastpaths.decoding import Decoded, StaticCacheDecoder

MAX_NEW = 24
PAD = 0
SIZES = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices: threads cost more than they bring, many times over when the CPU is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(family: str, device: str = "cpu"):
    torch.manual_seed(0)
    if family == "qwen2":
        config = transformers.Qwen2Config(**SIZES)
    else:
        config = transformers.LlamaConfig(**SIZES, max_position_embeddings=256)
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=torch.float32).eval()
    # Llama's config names eos 2; the tests choose their own stop tokens.
    model.generation_config.eos_token_id = None
    return model


def random_prompts(count: int = 12, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 21, (count,), generator=generator).tolist()
    return [torch.randint(3, 384, (n,), generator=generator).tolist() for n in lengths]


def reference(model, prompts, eos: list[int] | None, max_new_tokens: int = MAX_NEW):
    device = next(model.parameters()).device
    results = []
    for prompt in prompts:
        with torch.inference_mode():
            output = model.generate(
                torch.tensor([prompt], device=device),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=PAD,
            )
        tokens = output[0, len(prompt) :].tolist()
        stop = next((i for i, t in enumerate(tokens) if eos and t in eos), None)
        if stop is None:
            results.append(Decoded(tokens, "length"))
        else:
            results.append(Decoded(tokens[:stop], "stop"))
    return results


def stop_tokens(model, prompts, count: int = 2) -> list[int]:
    """`count` ids that end some greedy outputs early and leave at least one output untouched."""
    outputs = [d.token_ids for d in reference(model, prompts, eos=None)]
    early = Counter(t for tokens in outputs for t in set(tokens[1 : MAX_NEW // 2]))
    chosen: list[int] = []
    for token, _ in early.most_common():
        if sum(any(t in (*chosen, token) for t in tokens) for tokens in outputs) < len(outputs):
            chosen.append(token)
        if len(chosen) == count:
            break
    return chosen


def check(decoder, model, prompts, eos):
    want = reference(model, prompts, eos)
    assert {d.finish_reason for d in want} == {"stop", "length"}, f"stop tokens {eos}"
    got = decoder.decode(prompts)
    assert got == want


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize(
    ("max_batch_size", "max_prefill_tokens"),
    # One prefill per batch; then prefills in chunks of 1 column (12 rows, 7 tokens) and of 3
    # columns (5 rows, 17 tokens: the last chunk narrower).
    [(1024, 32768), (5, 32768), (1024, 7), (5, 17)],
)
def test_matches_generate(family, max_batch_size, max_prefill_tokens):
    model = tiny_model(family)
    prompts = random_prompts()
    eos = stop_tokens(model, prompts)
    decoder = StaticCacheDecoder(
        model,
        eos_token_ids=eos,
        pad_token_id=PAD,
        max_new_tokens=MAX_NEW,
        max_batch_size=max_batch_size,
        max_prefill_tokens=max_prefill_tokens,
    )
    check(decoder, model, prompts, eos)
    # Our attention is swapped in for `decode` only.
    assert model.config._attn_implementation == "sdpa"


def test_next_checkpoint_reuses_the_decoder():
    model = tiny_model("qwen2")
    prompts = random_prompts()
    eos = stop_tokens(model, prompts)
    decoder = StaticCacheDecoder(model, eos_token_ids=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW)
    check(decoder, model, prompts, eos)
    slots = dict(decoder._slots)

    # The next checkpoint's weights are copied into the same tensors, as ModelHolder does.
    generator = torch.Generator().manual_seed(5)
    state = {
        k: v + 0.02 * torch.randn(v.shape, generator=generator)
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(state)
    check(decoder, model, prompts, eos)
    assert decoder._slots == slots

    decoder.reset()
    check(decoder, model, list(reversed(prompts)), eos)


def staggered_stops(device: str = "cpu"):
    """A model, 32 prompts and ten stop tokens with which the running rows fall from 32 to at
    most 16 and then 8 at the decoder's looks every 2 steps, and 5 rows run to the limit."""
    model = tiny_model("qwen2", device=device)
    prompts = random_prompts(count=32, seed=2)
    return model, prompts, stop_tokens(model, prompts, count=10)


def test_rows_that_stopped_leave_the_batch():
    model, prompts, eos = staggered_stops()
    settings = dict(eos_token_ids=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW)
    decoder = StaticCacheDecoder(model, **settings)
    decoder.stop_check_interval = 2
    check(decoder, model, prompts, eos)
    (slot,) = decoder._slots.values()
    # 32 rows, then the running ones in the first 16, then in the first 8.
    assert list(slot.leading) == [16, 8]
    assert slot.leading[8].cache.layers[0].keys.data_ptr() == slot.cache.layers[0].keys.data_ptr()

    whole = StaticCacheDecoder(model, **settings, compact_rows=False)
    whole.stop_check_interval = 2
    assert whole.decode(prompts) == decoder.decode(prompts)
    assert not next(iter(whole._slots.values())).leading
    # Another order of the same prompts (the next call): the same shapes, in place again.
    check(decoder, model, list(reversed(prompts)), eos)
    assert list(decoder._slots.values()) == [slot] and list(slot.leading) == [16, 8]


def three_length_prompts() -> list[list[int]]:
    """Three lengths far enough apart to need three cache lengths, in batches of four prompts."""
    generator = torch.Generator().manual_seed(3)
    return [
        torch.randint(3, 384, (n,), generator=generator).tolist()
        for n in [4] * 4 + [70] * 4 + [140] * 4
    ]


def test_caches_beyond_the_budget_are_dropped_least_recently_used_first():
    model = tiny_model("qwen2")
    prompts = three_length_prompts()
    eos = stop_tokens(model, prompts)
    settings = dict(eos_token_ids=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW, max_batch_size=4)
    kept = StaticCacheDecoder(model, **settings, max_cache_bytes=None)
    want = kept.decode(prompts)
    assert len(kept._slots) == 3
    shapes = sorted(kept._slots, key=lambda key: key[1])
    sizes = [kept.cache_bytes(*key) for key in shapes]
    assert sizes[0] < sizes[1] < sizes[2]

    # Room for the two largest caches at once, not for all three.
    budget = sizes[2] + sizes[1]
    bounded = StaticCacheDecoder(model, **settings, max_cache_bytes=budget)
    assert bounded.decode(prompts) == want
    # Longest first: the shortest batch came last and pushed out the longest, least recent.
    assert list(bounded._slots) == [shapes[1], shapes[0]]
    # The same prompts again (the next checkpoint): the same outputs, still within the budget.
    assert bounded.decode(prompts) == want
    assert sum(bounded.cache_bytes(*key) for key in bounded._slots) <= budget
    # A single cache larger than the budget is still made: one batch at a time always runs.
    tight = StaticCacheDecoder(model, **settings, max_cache_bytes=1)
    assert tight.decode(prompts) == want
    assert list(tight._slots) == [shapes[0]]
    # The shape's cache is what the model's layers allocate.
    cache = kept._slots[shapes[2]].cache
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert held == sizes[2]


def test_peft_lora_model():
    peft = pytest.importorskip("peft")
    base = tiny_model("qwen2")
    prompts = random_prompts(seed=3)
    base_outputs = reference(base, prompts, eos=None)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    model = peft.get_peft_model(base, config).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    assert reference(model, prompts, eos=None) != base_outputs  # the adapter matters

    eos = stop_tokens(model, prompts)
    decoder = StaticCacheDecoder(
        model, eos_token_ids=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW, max_batch_size=7
    )
    check(decoder, model, prompts, eos)


def test_edges():
    model = tiny_model("qwen2")
    prompts = random_prompts(count=4)
    first = [d.token_ids[0] for d in reference(model, prompts, eos=None, max_new_tokens=1)]
    decoder = StaticCacheDecoder(
        model, eos_token_ids=[first[0]], pad_token_id=PAD, max_new_tokens=1
    )
    got = decoder.decode(prompts)
    assert got[0] == Decoded([], "stop")
    assert [d.token_ids for d in got[1:]] == [[t] if t != first[0] else [] for t in first[1:]]
    assert decoder.decode([]) == []
    with pytest.raises(ValueError, match="empty"):
        decoder.decode([[5], []])
    model.train()
    with pytest.raises(ValueError, match="eval"):
        decoder.decode(prompts)
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        StaticCacheDecoder(
            model, eos_token_ids=[1], pad_token_id=PAD, max_new_tokens=1, max_prefill_tokens=0
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_cuda_graphs_match_eager_steps(family):
    # Against our own eager loop on the same device: the same kernels on the same batches, so
    # equal to the bit. (Against `generate`, one row at a time picks other GPU kernels, and a
    # random model's near-ties can then flip a token; the CPU tests cover that comparison.)
    model = tiny_model(family, device="cuda")
    prompts = random_prompts()
    eos = stop_tokens(model, prompts)
    settings = dict(eos_token_ids=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW, max_batch_size=5)
    graphs = StaticCacheDecoder(model, **settings)
    eager = StaticCacheDecoder(model, **settings, use_cuda_graphs=False)
    assert graphs.use_cuda_graphs
    want = eager.decode(prompts)
    assert {d.finish_reason for d in want} == {"stop", "length"}, f"stop tokens {eos}"
    assert graphs.decode(prompts) == want
    captured = [slot.graph for slot in graphs._slots.values()]
    assert None not in captured

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    want = eager.decode(prompts)
    assert graphs.decode(prompts) == want
    assert [slot.graph for slot in graphs._slots.values()] == captured  # replayed, not recaptured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_captured_again_after_every_cache_was_dropped():
    # A budget that holds one cache at a time: each new shape drops every captured graph, and
    # the next capture needs a new memory pool (capturing into the dropped graphs' pool failed
    # PyTorch's internal assert `use_count > 0` on the H200, 2026-12-03).
    model = tiny_model("qwen2", device="cuda")
    prompts = three_length_prompts()
    eos = stop_tokens(model, prompts)
    settings = dict(eos_token_ids=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW, max_batch_size=4)
    want = StaticCacheDecoder(model, **settings, use_cuda_graphs=False).decode(prompts)
    tight = StaticCacheDecoder(model, **settings, max_cache_bytes=1)
    assert tight.decode(prompts) == want
    assert tight.decode(prompts) == want
    assert len(tight._slots) == 1 and next(iter(tight._slots.values())).graph is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_of_the_running_rows_match_eager_steps():
    model, prompts, eos = staggered_stops(device="cuda")
    settings = dict(eos_token_ids=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW)
    graphs = StaticCacheDecoder(model, **settings)
    eager = StaticCacheDecoder(model, **settings, use_cuda_graphs=False)
    for decoder in (graphs, eager):
        decoder.stop_check_interval = 2
    want = eager.decode(prompts)
    assert graphs.decode(prompts) == want
    (slot,) = graphs._slots.values()
    captured = {rows: leading.graph for rows, leading in slot.leading.items()}
    assert captured and None not in captured.values()
    # The next checkpoint replays the running rows' graphs too.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    want = eager.decode(prompts)
    assert graphs.decode(prompts) == want
    assert all(slot.leading[rows].graph is graph for rows, graph in captured.items())
