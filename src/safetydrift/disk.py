"""The disk a grid run will fill, estimated before any training, and whether it is free.

A grid's bulk is its checkpoints: each full or DPO checkpoint is as large as the base model's
weights, a LoRA or QLoRA one only its adapter. DVC's cache links its files into the workspaces
(`.dvc/config`: hardlinks, else symlinks), so each artifact exists once where the workspace and
the cache share a filesystem; where they do not, it is counted on each of them (a stage writes
its outputs in the workspace before DVC moves them into the cache).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.cells import study_cells
from safetydrift.params import ParamError, get
from safetydrift.training.settings import checkpoint_fractions, keep_checkpoints_setting

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ADAPTER_DTYPE_BYTES = 4  # adapters are trained and saved in float32
# Per saved tensor: its entry in the safetensors header; per adapter: its config and record.
TENSOR_HEADER_BYTES = 160
ADAPTER_FILES_BYTES = 4096
# A generated or judged row: its prompt, reference and fields, plus the response's text.
ROW_BYTES = 2048
RESPONSE_BYTES_PER_TOKEN = 8
# Rows of a measurement whose prepared data does not exist yet (AdvBench has 520).
UNPREPARED_ROWS = 2000
# MLflow's store, DVC's state and the logs grow beside the outputs.
HEADROOM_BYTES = 64 * 2**20


class DiskSpaceError(ValueError):
    """The grid's outputs will not fit on the disk; nothing was trained."""


@dataclass
class FreeSpace:
    path: Path
    free_bytes: int
    holds: str  # what lives there: "the workspace and the DVC cache", ...


@dataclass
class DiskEstimate:
    cells: list[str]  # cells still to train
    done: list[str]  # cells whose training dvc.lock already has
    keep_checkpoints: str
    checkpoints_per_cell: int
    checkpoint_bytes: dict[str, int]  # per method
    kept_bytes: int  # checkpoints left in the DVC outputs
    set_aside_bytes: int  # `keep_checkpoints: final`: earlier checkpoints of the cells in flight
    generation_bytes: int  # generations and evaluations of the cells to train
    headroom_bytes: int = HEADROOM_BYTES
    free: list[FreeSpace] = field(default_factory=list)

    @property
    def need_bytes(self) -> int:
        return self.kept_bytes + self.set_aside_bytes + self.generation_bytes + self.headroom_bytes

    @property
    def short(self) -> list[FreeSpace]:
        return [space for space in self.free if space.free_bytes < self.need_bytes]


def size_text(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"


def model_config(workspace: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The base model's config: the prepared one, else the source's (a folder, or the hub)."""
    prepared = workspace / "models" / "base" / "config.json"
    if prepared.exists():
        return json.loads(prepared.read_text(encoding="utf-8"))
    source = str(get(params, "model.source"))
    local = workspace / source / "config.json"
    if local.exists():
        return json.loads(local.read_text(encoding="utf-8"))
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(source, "config.json", revision=get(params, "model.revision", None))
    except Exception as error:  # noqa: BLE001 - any hub failure: one line saying what to do
        raise ParamError(
            f"model `{source}`: its config.json could not be read for the disk estimate "
            f"({type(error).__name__}); run `dvc repro prepare_model` first"
        ) from None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(inputs, outputs) of each linear projection of a Llama-style decoder block."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inner = int(config["intermediate_size"])
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


def parameter_count(config: dict[str, Any]) -> int:
    """Weights of a Llama-style decoder (Llama, Qwen2, Mistral) from its config."""
    hidden = int(config["hidden_size"])
    shapes = projection_shapes(config)
    # Qwen2 has biases on its query, key and value projections; Llama says so in its config.
    biased = config.get("attention_bias", config.get("model_type") == "qwen2")
    biases = sum(shapes[name][1] for name in ("q_proj", "k_proj", "v_proj")) if biased else 0
    block = sum(inputs * outputs for inputs, outputs in shapes.values()) + biases + 2 * hidden
    embeddings = int(config["vocab_size"]) * hidden
    heads = 1 if config.get("tie_word_embeddings", False) else 2
    return int(config["num_hidden_layers"]) * block + heads * embeddings + hidden


def full_checkpoint_bytes(workspace: Path, params: dict[str, Any], config: dict[str, Any]) -> int:
    """A full checkpoint is saved like the base model: its prepared folder's size, else its
    weights counted from the config in `model.dtype`."""
    base = workspace / "models" / "base"
    if (base / "config.json").exists():
        return sum(path.stat().st_size for path in base.rglob("*") if path.is_file())
    dtype = str(get(params, "model.dtype", "bfloat16"))
    return parameter_count(config) * DTYPE_BYTES.get(dtype, 4)


def adapter_bytes(config: dict[str, Any], lora: dict[str, Any], where: str) -> int:
    """A LoRA adapter: per layer and target module, A (r × inputs) and B (outputs × r)."""
    shapes = projection_shapes(config)
    targets = list(lora.get("target_modules") or [])
    unknown = [name for name in targets if name not in shapes]
    if unknown:
        raise ParamError(
            f"params.yaml: `{where}.target_modules` names {unknown}, which the disk estimate "
            f"cannot size (it knows {', '.join(shapes)})"
        )
    rank = int(lora.get("r", 8))
    layers = int(config["num_hidden_layers"])
    weights = layers * sum(rank * sum(shapes[name]) for name in targets)
    tensors = layers * len(targets) * 2
    return weights * ADAPTER_DTYPE_BYTES + tensors * TENSOR_HEADER_BYTES + ADAPTER_FILES_BYTES


def checkpoint_bytes(workspace: Path, params: dict[str, Any], methods: list[str]) -> dict[str, int]:
    config = model_config(workspace, params)
    sizes = {}
    for method in methods:
        lora = get(params, f"methods.{method}.lora", None)
        sizes[method] = (
            adapter_bytes(config, lora, f"methods.{method}.lora")
            if lora
            else full_checkpoint_bytes(workspace, params, config)
        )
    return sizes


def measurement_rows(path: Path, params: dict[str, Any], measurement: str) -> int:
    """Rows a generation stage answers: the prepared file's, or its `subset`."""
    rows = UNPREPARED_ROWS
    if path.exists():
        with path.open("rb") as handle:
            rows = sum(1 for line in handle if line.strip())
    subset = get(params, f"{measurement}.prompts.subset", None)
    return min(rows, int(subset)) if subset else rows


def generation_bytes_per_cell(workspace: Path, params: dict[str, Any], checkpoints: int) -> int:
    """Each checkpoint's AdvBench responses (generated, then judged twice: refusal and harm) and
    chrF translations (generated once)."""
    refusal = measurement_rows(workspace / "data" / "advbench.jsonl", params, "refusal")
    chrf = measurement_rows(workspace / "data" / "mtpref" / "test.jsonl", params, "chrf")
    row = ROW_BYTES + RESPONSE_BYTES_PER_TOKEN * int(get(params, "generation.max_new_tokens"))
    return (3 * refusal + chrf) * checkpoints * row


def free_space(workspace: Path, cache_dir: Path) -> list[FreeSpace]:
    """Free bytes where the outputs go: one filesystem when the cache is on the workspace's."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if os.stat(workspace).st_dev == os.stat(cache_dir).st_dev:
        holds = "the workspace and the DVC cache"
        return [FreeSpace(workspace, shutil.disk_usage(workspace).free, holds)]
    # On two filesystems a link cannot always join them: each may hold a copy.
    return [
        FreeSpace(workspace, shutil.disk_usage(workspace).free, "the workspace"),
        FreeSpace(cache_dir, shutil.disk_usage(cache_dir).free, "the DVC cache"),
    ]


def estimate(
    workspace: Path,
    params: dict[str, Any],
    cells: list[str],
    done: list[str],
    parallel: int,
    cache_dir: Path,
) -> DiskEstimate:
    """The disk the cells still to train will fill, at its peak, and the free space."""
    keep = keep_checkpoints_setting(get(params, "train.keep_checkpoints", "all"))
    n_checkpoints = len(checkpoint_fractions(get(params, "train.checkpoint_fractions")))
    methods = {cell.name: cell.method for cell in study_cells(params)}
    to_train = [cell for cell in cells if cell not in done]
    sizes = checkpoint_bytes(workspace, params, sorted({methods[cell] for cell in cells}))
    kept = 1 if keep == "final" else n_checkpoints
    set_aside = sorted(
        (sizes[methods[cell]] * (n_checkpoints - kept) for cell in to_train), reverse=True
    )
    return DiskEstimate(
        cells=to_train,
        done=[cell for cell in cells if cell in done],
        keep_checkpoints=keep,
        checkpoints_per_cell=n_checkpoints,
        checkpoint_bytes=sizes,
        kept_bytes=sum(sizes[methods[cell]] * kept for cell in to_train),
        # Set-aside checkpoints are deleted as each cell's generations are done: at most
        # `parallel` cells hold theirs at once.
        set_aside_bytes=sum(set_aside[:parallel]),
        generation_bytes=len(to_train)
        * generation_bytes_per_cell(workspace, params, n_checkpoints),
        free=free_space(workspace, cache_dir),
    )


def describe(found: DiskEstimate) -> str:
    """The estimate, for `safetydrift grid --estimate` and the grid's log."""
    sizes = ", ".join(f"{m} {size_text(b)}" for m, b in found.checkpoint_bytes.items())
    lines = [
        f"disk estimate: {len(found.cells)} cell(s) to train, {len(found.done)} already in "
        f"dvc.lock; {found.checkpoints_per_cell} checkpoints a cell, "
        f"train.keep_checkpoints: {found.keep_checkpoints}",
        f"  a checkpoint: {sizes}",
        f"  checkpoints kept {size_text(found.kept_bytes)} + set aside while running "
        f"{size_text(found.set_aside_bytes)} + generations and evaluations "
        f"{size_text(found.generation_bytes)} + headroom {size_text(found.headroom_bytes)} "
        f"= {size_text(found.need_bytes)}",
    ]
    lines += [
        f"  free: {size_text(space.free_bytes)} on {space.path} ({space.holds})"
        for space in found.free
    ]
    return "\n".join(lines)


def refuse_if_short(found: DiskEstimate) -> None:
    """One line naming the need and the free space when the outputs will not fit."""
    for space in found.short:
        advice = "free space, run fewer cells"
        if found.keep_checkpoints == "all" and found.checkpoints_per_cell > 1:
            advice += ", set `train.keep_checkpoints: final`"
        raise DiskSpaceError(
            f"the grid needs about {size_text(found.need_bytes)} on {space.path} ({space.holds}) "
            f"for {len(found.cells)} cell(s) but only {size_text(space.free_bytes)} is free: "
            f"{advice}, or pass --skip-disk-check to start anyway "
            "(`safetydrift grid --estimate` shows the sum)"
        )
