"""A cell's checkpoints (`Checkpoint`: the base model as the 0% point, full models, adapters),
found on disk in order of training progress, and the `ModelHolder` that keeps the base model on
the device and copies each checkpoint's weights into it in turn (on the 4-bit base for QLoRA
adapters, when asked).

torch, PEFT, safetensors' torch loader and transformers' BitsAndBytesConfig are imported inside
the functions that use them, for their import cost (torch ~1 s, PEFT ~4 s on this project's 2-core
machine): the generation stages import this module at their top, check their params and inputs,
and time their imports apart (`safetydrift.generation.run.import_libraries`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.cells import checkpoint_label
from safetydrift.generation.settings import GenerationSettings
from safetydrift.models import ModelError, checkpoint_kind, load_model, torch_dtype
from safetydrift.params import ParamError


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

    A QLoRA adapter evaluated on its 4-bit base (`generation.qlora_base: quantized`) goes the same
    way, onto that base: its 4-bit layers are dequantized once, at load, into plain linear layers
    of their compute dtype (transformers' `dequantize`), which hold the 4-bit base's values
    exactly; the adapter is then merged into them as a LoRA adapter is. The product is bitsandbytes'
    own dequantize-then-`linear` arithmetic, which bitsandbytes 0.50 itself takes for large row
    counts (for small ones it picks a fused 4-bit kernel, by shape and GPU, whose rounding differs).
    Merging rounds the delta into bf16 weights, where PEFT's unmerged forward rounds it into bf16
    outputs instead: the two lose the same share of a small delta (on random 896 x 896 layers, an
    error of 0.72 of the delta's effect either way at 0.3% of the weights' size, 0.23 at 1%), so
    merging costs no fidelity and saves the unmerged adapter's extra kernels on seven projections
    per layer (with the adapter unmerged, QLoRA's generation stages took about twice LoRA's on the
    static engine: `reports/h200-2026-12-03-grid2/`). When the compute dtype is not
    `generation.dtype` the 4-bit layers stay (`keeps_4bit_layers`), with the adapter unmerged on
    them, on the `hf` backend.
    """

    def __init__(
        self,
        base_dir: Path,
        dtype: str,
        device: str,
        quantization: dict[str, Any] | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.device = device
        self.dtype = dtype
        self.quantized = quantization is not None
        kwargs = {} if quantization is None else quantized_loading(quantization)
        self.model = load_model(base_dir, dtype=dtype, device=device, **kwargs).eval()
        self._pristine: dict[str, Any] | None = None  # base weights of the adapted layers
        compute_dtype = (quantization or {}).get("compute_dtype", "bfloat16")
        self.keeps_4bit_layers = self.quantized and compute_dtype != dtype
        if self.quantized and not self.keeps_4bit_layers:
            self.model.dequantize(dtype=torch_dtype(dtype))

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
        from safetensors.torch import load_file  # the import cost: see the module's docstring

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
        # The import cost: see the module's docstring.
        import torch
        from peft import PeftModel, set_peft_model_state_dict
        from peft.tuners.lora import LoraLayer
        from safetensors.torch import load_file

        if self.keeps_4bit_layers:
            # Unmerged on bitsandbytes' 4-bit layers, which a merge would requantize.
            if self._pristine is None:
                self.model = PeftModel.from_pretrained(self.model, str(path)).eval()
                self._pristine = {}
            else:
                result = set_peft_model_state_dict(
                    self.model,
                    load_file(str(path / "adapter_model.safetensors"), device=self.device),
                )
                if getattr(result, "unexpected_keys", None):
                    raise ModelError(
                        f"{path}: adapter weights that do not fit: {result.unexpected_keys[:5]}"
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
    # The import cost: see the module's docstring.
    import torch
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available() and not bitsandbytes_runs_on_cpu():
        raise ParamError(
            "params.yaml: `generation.qlora_base: quantized` evaluates QLoRA adapters on the 4-bit "
            "base, which needs bitsandbytes with a CUDA GPU or with its CPU backend; on this "
            "machine set it to merged"
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


def bitsandbytes_runs_on_cpu() -> bool:
    try:
        import bitsandbytes
    except ImportError:
        return False
    return "cpu" in getattr(bitsandbytes, "supported_torch_devices", ())


def quantized_base(
    checkpoints: Sequence[Checkpoint], settings: GenerationSettings
) -> dict[str, Any] | None:
    """The 4-bit base to evaluate these checkpoints on, or None for the bf16 base."""
    if settings.qlora_base != "quantized":
        return None
    bases = [c.quantization for c in checkpoints if c.kind == "adapter" and c.quantization]
    if not bases:
        return None
    quantized_loading(bases[0])  # refuses, clearly, where bitsandbytes cannot run
    if settings.backend == "vllm":
        raise ParamError(
            "params.yaml: `generation.qlora_base: quantized` runs on the hf or static backend; "
            "the vLLM path evaluates adapters on the unquantized base"
        )
    return bases[0]
