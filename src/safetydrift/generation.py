"""Greedy generation for every checkpoint of a cell, shared by the refusal and chrF measurements.

The base model is loaded once per process; each checkpoint's weights (full weights, or a LoRA
adapter) are then copied into the same tensors, so nothing merged is ever written to disk and
whatever the engine built for one checkpoint (CUDA graphs, caches) serves the next.

Engines: `hf` (transformers' `generate` in length-sorted, left-padded batches; always works),
`static` (our static-cache decode loop with CUDA graphs, `safetydrift.fastpaths.decoding`) and
`vllm` (when installed). All are greedy, up to `max_new_tokens`, on the prompts `prompt.format`
renders (the text training encodes too).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from safetydrift.cells import checkpoint_label
from safetydrift.compat import fast_path_verified
from safetydrift.determinism import deterministic_mode
from safetydrift.models import ModelError, PromptFormat, checkpoint_kind, load_tokenizer
from safetydrift.params import ParamError, boolean

log = logging.getLogger(__name__)

BACKENDS = ("hf", "static", "vllm")
# Where a QLoRA adapter is evaluated: merged into the bf16 base, or unmerged on the 4-bit base it
# was trained on (the authors' way).
QLORA_BASES = ("merged", "quantized")


@dataclass
class GenerationSettings:
    backend: str = "hf"
    max_new_tokens: int = 256
    batch_size: int = 64
    dtype: str = "bfloat16"
    qlora_base: str = "merged"
    # Bit-for-bit repeatable on one GPU (`safetydrift.determinism`): the static engine's steps
    # run eager, without CUDA graphs.
    deterministic: bool = False

    @classmethod
    def from_params(cls, values: dict[str, Any]) -> GenerationSettings:
        settings = cls(
            **{
                k: values[k]
                for k in ("backend", "max_new_tokens", "batch_size", "dtype", "qlora_base")
                if k in values
            },
            deterministic=boolean(values.get("deterministic", False), "generation.deterministic"),
        )
        if settings.deterministic and settings.backend == "vllm":
            raise ParamError(
                "params.yaml: `generation.deterministic` needs the hf or static backend; vLLM "
                "schedules its batches at run time"
            )
        if settings.qlora_base not in QLORA_BASES:
            raise ParamError(
                f"params.yaml: `generation.qlora_base` must be one of {QLORA_BASES}, "
                f"got {settings.qlora_base!r}"
            )
        if settings.backend not in BACKENDS:
            raise ParamError(
                f"params.yaml: `generation.backend` must be one of {BACKENDS}, "
                f"got {settings.backend!r}"
            )
        if settings.max_new_tokens <= 0 or settings.batch_size <= 0:
            raise ParamError(
                "params.yaml: `generation.max_new_tokens` and `generation.batch_size` must be > 0"
            )
        return settings


@dataclass
class PromptSettings:
    """How a measurement's prompts are framed: the studies' options."""

    suffix: str = ""  # the seed authors appended "!" to every AdvBench request
    # after `suffix`, for the base model only: the authors' chrF prompts of the base had a "!"
    base_suffix: str = ""
    prefix: str = ""  # e.g. the ENAIS identity-shifting persona, before the user's request
    system_prompt: str | None = None
    subset: int | None = None  # a fixed-seed sample of N prompts
    subset_seed: int = 0

    @classmethod
    def from_params(cls, values: dict[str, Any] | None) -> PromptSettings:
        values = values or {}
        settings = cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})
        if settings.subset is not None and settings.subset <= 0:
            raise ParamError(f"params.yaml: a prompts `subset` must be > 0, got {settings.subset}")
        return settings

    def select(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.subset is None or self.subset >= len(rows):
            return list(rows)
        chosen = sorted(random.Random(self.subset_seed).sample(range(len(rows)), self.subset))
        return [rows[i] for i in chosen]

    def conversation(self, text: str, base: bool = False) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        suffix = self.suffix + (self.base_suffix if base else "")
        messages.append({"role": "user", "content": f"{self.prefix}{text}{suffix}"})
        return messages


@dataclass
class Generation:
    response: str
    new_tokens: int
    finish_reason: str  # "stop" or "length"


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    """One evaluation point of a cell; the base model is the 0% point."""

    label: str
    fraction: float
    step: int
    path: Path
    kind: str  # "model", "adapter" or "base"
    quantization: dict[str, Any] | None = None  # the 4-bit base a QLoRA adapter was trained on


def list_checkpoints(cell_dir: Path) -> list[Checkpoint]:
    import json

    if not cell_dir.is_dir():
        raise ModelError(f"{cell_dir}: no such checkpoint directory (run the train stage first)")
    found = []
    for path in sorted(p for p in cell_dir.iterdir() if p.is_dir() and p.name.startswith("ckpt-")):
        kind = checkpoint_kind(path)
        info_file = path / "checkpoint.json"
        if not info_file.exists():
            raise ModelError(f"{path}: no checkpoint.json (step and fraction of this checkpoint)")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        found.append(
            Checkpoint(
                path.name,
                float(info["fraction"]),
                int(info["step"]),
                path,
                kind,
                info.get("quantization"),
            )
        )
    if not found:
        raise ModelError(f"{cell_dir}: holds no ckpt-* checkpoint")
    return sorted(found, key=lambda c: c.fraction)


def trained_checkpoints(cell_dir: Path, intermediate_dir: Path) -> list[Checkpoint]:
    """Every checkpoint a cell's training wrote, in order of training progress.

    With `train.keep_checkpoints: final` the train stage's output (`cell_dir`) holds the last
    checkpoint only and the earlier ones wait in `intermediate_dir`, beside a copy of the
    output's training.json. Their generations depend on them through that record: the same
    training wrote both, so a byte-identical copy says they belong together, and a retraining
    (which changes the output and so reruns this stage) writes them again.
    """
    import json

    kept = list_checkpoints(cell_dir)
    record_file = cell_dir / "training.json"
    if not record_file.exists():
        return kept
    record = json.loads(record_file.read_text(encoding="utf-8"))
    labels = {c.label for c in kept}
    written = [checkpoint_label(float(c["fraction"])) for c in record["checkpoints"]]
    missing = [label for label in written if label not in labels]
    if not missing:
        return kept
    beside = intermediate_dir / "training.json"
    if not beside.exists() or beside.read_bytes() != record_file.read_bytes():
        cell = cell_dir.name
        raise ModelError(
            f"{cell_dir} holds only the final checkpoint (`train.keep_checkpoints: final`) and "
            f"{intermediate_dir} no longer holds this training's {', '.join(missing)}: their "
            "weights were deleted once their generations existed. To generate from them again, "
            f"retrain the cell (`dvc repro --force train@{cell}`), with "
            "`train.keep_checkpoints: all` to keep every checkpoint's weights"
        )
    found = {c.label: c for c in list_checkpoints(intermediate_dir)}
    absent = [label for label in missing if label not in found]
    if absent:
        raise ModelError(f"{intermediate_dir}: lacks {', '.join(absent)} (training.json lists it)")
    return sorted([*kept, *(found[label] for label in missing)], key=lambda c: c.fraction)


def base_checkpoint(base_dir: Path) -> Checkpoint:
    checkpoint_kind(base_dir)
    return Checkpoint("ckpt-000", 0.0, 0, base_dir, "base")


class ModelHolder:
    """The base model on the device, with each checkpoint's weights copied into it in turn.

    A LoRA checkpoint is merged into the resident base weights in memory (PEFT's
    `merge_adapter`), never on disk: decoding then runs the plain model's kernels, where an
    unmerged adapter adds two small matmuls to every target module at every step (on the H100 a
    third more time per AdvBench pass). Before the next adapter is merged, the base weights are
    restored from a copy, exactly: subtracting the old delta again would leave bf16 rounding in
    them. Every copy goes into the same tensors, so an engine's CUDA graphs stay valid.
    """

    def __init__(
        self,
        base_dir: Path,
        dtype: str,
        device: str,
        quantization: dict[str, Any] | None = None,
    ) -> None:
        from safetydrift.models import load_model

        self.base_dir = base_dir
        self.device = device
        self.dtype = dtype
        # On a 4-bit base the adapters stay unmerged: merging would requantize the base weights.
        self.quantized = quantization is not None
        kwargs = {} if quantization is None else quantized_loading(quantization)
        self.model = load_model(base_dir, dtype=dtype, device=device, **kwargs).eval()
        self._pristine: dict[str, Any] | None = None  # base weights of the adapted layers

    def activate(self, checkpoint: Checkpoint):
        """Return the model to run for `checkpoint` (the same object for every checkpoint)."""
        if checkpoint.kind == "adapter":
            return self._load_adapter(checkpoint.path)
        if self._pristine is not None:
            raise ModelError(
                f"{checkpoint.path}: a cell's checkpoints must be all adapters or all full "
                "models (this one follows an adapter)"
            )
        if checkpoint.kind == "base":
            return self.model
        return self._load_full(checkpoint.path)

    def _load_full(self, path: Path):
        from safetensors.torch import load_file

        expected = set(self.model.state_dict())
        loaded: set[str] = set()
        for shard in sorted(path.glob("*.safetensors")):
            state = load_file(str(shard), device=self.device)
            unknown = set(state) - expected
            if unknown:
                raise ModelError(
                    f"{shard}: weights the base model does not have: {sorted(unknown)[:5]}"
                )
            self.model.load_state_dict(state, strict=False)  # copies into the existing tensors
            loaded |= set(state)
        tied = (
            {"lm_head.weight"}
            if getattr(self.model.config, "tie_word_embeddings", False)
            else set()
        )
        missing = expected - loaded - tied
        if missing:
            raise ModelError(f"{path}: weights missing from the checkpoint: {sorted(missing)[:5]}")
        return self.model

    def _load_adapter(self, path: Path):
        import torch
        from peft import PeftModel, set_peft_model_state_dict
        from peft.tuners.lora import LoraLayer
        from safetensors.torch import load_file

        if self.quantized:
            if self._pristine is None:
                self.model = PeftModel.from_pretrained(self.model, str(path)).eval()
                self._pristine = {}
            else:
                set_peft_model_state_dict(
                    self.model,
                    load_file(str(path / "adapter_model.safetensors"), device=self.device),
                )
            return self.model
        if self._pristine is None:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name="default")
            self.model.to(self.device).eval()
            self._pristine = {
                name: module.get_base_layer().weight.detach().clone()
                for name, module in self.model.named_modules()
                if isinstance(module, LoraLayer)
            }
        else:
            self.model.unmerge_adapter()  # PEFT's bookkeeping; the weights are restored below
            with torch.no_grad():
                for name, module in self.model.named_modules():
                    if name in self._pristine:
                        module.get_base_layer().weight.copy_(self._pristine[name])
            result = set_peft_model_state_dict(
                self.model, load_file(str(path / "adapter_model.safetensors"), device=self.device)
            )
            if getattr(result, "unexpected_keys", None):
                raise ModelError(
                    f"{path}: adapter weights that do not fit: {result.unexpected_keys[:5]}"
                )
        self.model.merge_adapter()
        return self.model


def quantized_loading(quantization: dict[str, Any]) -> dict[str, Any]:
    """from_pretrained's arguments for the 4-bit base a QLoRA adapter was trained on."""
    import torch
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise ParamError(
            "params.yaml: `generation.qlora_base: quantized` evaluates QLoRA adapters on the 4-bit "
            "base, which needs a CUDA GPU (bitsandbytes); on this machine set it to merged"
        )
    compute_dtype = getattr(torch, quantization.get("compute_dtype", "bfloat16"))
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.get("quant_type", "nf4"),
            bnb_4bit_use_double_quant=bool(quantization.get("double_quant", True)),
            bnb_4bit_compute_dtype=compute_dtype,
        )
    }


def quantized_base(
    checkpoints: Sequence[Checkpoint], settings: GenerationSettings
) -> dict[str, Any] | None:
    """The 4-bit base to evaluate these checkpoints on, or None for the bf16 base."""
    if settings.qlora_base != "quantized":
        return None
    bases = [c.quantization for c in checkpoints if c.kind == "adapter" and c.quantization]
    if not bases:
        return None
    quantized_loading(bases[0])  # refuses, clearly, where there is no CUDA GPU
    if settings.backend == "vllm":
        raise ParamError(
            "params.yaml: `generation.qlora_base: quantized` runs on the hf backend; the vLLM "
            "path evaluates adapters on the unquantized base"
        )
    return bases[0]


# --------------------------------------------------------------------------------------------
# Engines


class HFEngine:
    """transformers' `generate`, greedy, in length-sorted batches with left padding."""

    name = "hf"

    def __init__(self, tokenizer, settings: GenerationSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings

    def generate(self, model, prompt_ids: Sequence[list[int]]) -> list[tuple[list[int], str]]:
        import torch
        from transformers import GenerationConfig

        eos = eos_token_ids(self.tokenizer, model)
        # A fresh config: the model's own may sample or penalise repetition; the study is greedy.
        greedy = GenerationConfig(
            do_sample=False,
            max_new_tokens=self.settings.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        results: list[tuple[list[int], str]] = [([], "")] * len(prompt_ids)
        pad = self.tokenizer.pad_token_id
        device = next(model.parameters()).device
        for start in range(0, len(order), self.settings.batch_size):
            batch = order[start : start + self.settings.batch_size]
            width = max(len(prompt_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                tokens = prompt_ids[index]
                ids[row, width - len(tokens) :] = torch.tensor(tokens)
                mask[row, width - len(tokens) :] = 1
            with torch.inference_mode():
                output = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=greedy,
                )
            for row, index in enumerate(batch):
                results[index] = split_at_stop(output[row, width:].tolist(), eos)
        return results


def split_at_stop(tokens: list[int], eos: Sequence[int]) -> tuple[list[int], str]:
    for position, token in enumerate(tokens):
        if token in eos:
            return tokens[:position], "stop"
    return tokens, "length"


def eos_token_ids(tokenizer, model) -> list[int]:
    """Every id that ends a turn: the generation config's and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if value is None:
            continue
        for token in value if isinstance(value, list) else [value]:
            if token not in ids:
                ids.append(int(token))
    if not ids:
        raise ModelError("the model and tokenizer name no end-of-sequence token")
    return ids


class StaticEngine:
    """Our static-cache decode loop (CUDA graphs on a GPU), reused across checkpoints."""

    name = "static"

    def __init__(self, tokenizer, settings: GenerationSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self._decoder = None
        self._model = None

    def generate(self, model, prompt_ids: Sequence[list[int]]) -> list[tuple[list[int], str]]:
        from safetydrift.fastpaths.decoding import StaticCacheDecoder

        if self._decoder is None or self._model is not model:
            self._decoder = StaticCacheDecoder(
                model,
                eos_token_ids=eos_token_ids(self.tokenizer, model),
                pad_token_id=self.tokenizer.pad_token_id,
                max_new_tokens=self.settings.max_new_tokens,
                max_batch_size=self.settings.batch_size,
                # A captured graph replays the same kernels, but whether each replay is
                # bit-stable has not been measured: deterministic runs take eager steps.
                use_cuda_graphs=False if self.settings.deterministic else None,
            )
            self._model = model
        return [(d.token_ids, d.finish_reason) for d in self._decoder.decode(prompt_ids)]


def build_engine(tokenizer, settings: GenerationSettings):
    if settings.backend == "hf":
        return HFEngine(tokenizer, settings)
    if settings.backend == "static":
        if fast_path_verified("static-decoding"):
            return StaticEngine(tokenizer, settings)
        return HFEngine(tokenizer, settings)
    raise ParamError(
        "params.yaml: `generation.backend: vllm` is handled by generate_for_checkpoints' vLLM path"
    )


def encode_conversations(
    tokenizer,
    conversations: Sequence[list[dict[str, str]]],
    prompt_format: PromptFormat | None = None,
) -> list[list[int]]:
    """Prompt ids as `prompt_format` renders them (the model's chat template by default)."""
    prompt_format = prompt_format or PromptFormat()
    prompt_format.check(tokenizer)
    return [prompt_format.encode_prompt(tokenizer, c) for c in conversations]


# --------------------------------------------------------------------------------------------
# A whole stage: every checkpoint of a cell on one set of prompts


@dataclass
class CheckpointGenerations:
    checkpoint: Checkpoint
    rows: list[dict[str, Any]]
    seconds: float  # generating (for the first checkpoint, graph capture included)
    load_seconds: float  # loading its weights; for the first, the tokenizer and base model too
    engine: str  # the engine that ran: `static` falls back to `hf` on unverified libraries


def import_libraries(adapters: bool) -> None:
    """Import what generating needs (torch, transformers' models, PEFT for adapters) now, so that a
    stage reports its imports apart from its loading: in a fresh process they cost more."""
    import torch  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    if adapters:
        import peft  # noqa: F401


def generate_for_checkpoints(
    base_dir: Path,
    checkpoints: Sequence[Checkpoint],
    conversations: Sequence[list[dict[str, str]]],
    ids: Sequence[Any],
    settings: GenerationSettings,
    device: str,
    prompt_format: PromptFormat | None = None,
):
    """Yield each checkpoint's generations (`id`, `prompt`, `response`, counts, finish reason).

    With `settings.deterministic` everything, model loading included, runs in deterministic
    mode (greedy decoding draws no random numbers; the seed is fixed all the same).
    """
    with deterministic_mode(seed=0, enabled=settings.deterministic):
        yield from _generate(
            base_dir, checkpoints, conversations, ids, settings, device, prompt_format
        )


def _generate(base_dir, checkpoints, conversations, ids, settings, device, prompt_format):
    quantization = quantized_base(checkpoints, settings)
    if settings.backend == "vllm":
        yield from _generate_vllm(
            base_dir, checkpoints, conversations, ids, settings, prompt_format
        )
        return
    loading = time.perf_counter()
    tokenizer = load_tokenizer(base_dir)
    holder = ModelHolder(base_dir, settings.dtype, device, quantization)
    # Our static decoder has not been measured on bitsandbytes' 4-bit layers.
    engine = build_engine(tokenizer, settings if quantization is None else hf_only(settings))
    prompt_ids = encode_conversations(tokenizer, conversations, prompt_format)
    for checkpoint in checkpoints:
        model = holder.activate(checkpoint)
        started = time.perf_counter()
        load_seconds = started - loading
        outputs = engine.generate(model, prompt_ids)
        seconds = time.perf_counter() - started
        responses = tokenizer.batch_decode(
            [tokens for tokens, _ in outputs], skip_special_tokens=True
        )
        rows = [
            {
                "id": row_id,
                "prompt": conversation[-1]["content"],
                "response": response,
                "new_tokens": len(tokens),
                "finish_reason": reason,
            }
            for row_id, conversation, response, (tokens, reason) in zip(
                ids, conversations, responses, outputs, strict=True
            )
        ]
        yield CheckpointGenerations(checkpoint, rows, seconds, load_seconds, engine.name)
        loading = time.perf_counter()


def hf_only(settings: GenerationSettings) -> GenerationSettings:
    return replace(settings, backend="hf")


def _generate_vllm(base_dir, checkpoints, conversations, ids, settings, prompt_format=None):
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise ParamError(
            "params.yaml: `generation.backend` is vllm, but vLLM is not installed "
            "(pip install 'safetydrift[vllm]'), or use the hf backend"
        ) from None
    sampling = SamplingParams(temperature=0.0, max_tokens=settings.max_new_tokens)
    # The prompts as token ids, so that vLLM decodes exactly what the other engines do.
    prompts = [
        {"prompt_token_ids": ids_}
        for ids_ in encode_conversations(load_tokenizer(base_dir), conversations, prompt_format)
    ]
    has_adapters = any(c.kind == "adapter" for c in checkpoints)
    llm = None
    for number, checkpoint in enumerate(checkpoints, start=1):
        loading = time.perf_counter()
        lora = None
        if checkpoint.kind == "adapter":
            lora = LoRARequest(checkpoint.label, number, str(checkpoint.path))
            model_path = base_dir
        else:
            model_path = checkpoint.path
        if llm is None or checkpoint.kind == "model":
            llm = LLM(model=str(model_path), dtype=settings.dtype, enable_lora=has_adapters, seed=0)
        started = time.perf_counter()
        outputs = llm.generate(prompts, sampling, lora_request=lora, use_tqdm=False)
        rows = [
            {
                "id": row_id,
                "prompt": conversation[-1]["content"],
                "response": out.outputs[0].text,
                "new_tokens": len(out.outputs[0].token_ids),
                "finish_reason": out.outputs[0].finish_reason,
            }
            for row_id, conversation, out in zip(ids, conversations, outputs, strict=True)
        ]
        yield CheckpointGenerations(
            checkpoint, rows, time.perf_counter() - started, started - loading, "vllm"
        )
