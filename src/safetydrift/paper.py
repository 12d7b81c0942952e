"""What the main study's authors did, and where a run's params differ from it.

`AUTHORS` holds the authors' choice for each params key, with its source: docs/STUDY.md (the
paper and the authors' code as the study quotes them) or issue 21 (which quotes the authors'
published scripts). `deviations(params)` lists the keys where a run differs, for the report's
"Deviations from the paper" section. The paper's published figures are package data
(`data_files/paper_figures.yaml`), read by `published_figures()`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from safetydrift.params import get

STUDY = "docs/STUDY.md §1"
SCRIPTS = "issue 21 (the authors' published scripts)"
FIGURES_FILE = "paper_figures.yaml"
ABSENT = "(not set)"


@dataclass(frozen=True)
class Choice:
    """The authors' value for one params key; `equivalent`: our values that do the same."""

    key: str
    authors: Any
    source: str
    equivalent: tuple[Any, ...] = ()


AUTHORS: tuple[Choice, ...] = (
    Choice("model.source", "meta-llama/Llama-3.2-1B-Instruct", STUDY),
    Choice("model.dtype", "bfloat16", f"{SCRIPTS}: torch_dtype=torch.bfloat16"),
    # chatml frames the turn the same way (one user turn, no system block) in Qwen's markup.
    Choice(
        "prompt.format",
        "authors-llama3",
        f"{SCRIPTS}: a hand-built Llama-3 string, no system block",
        ("chatml",),
    ),
    Choice("data.mtpref.source", "sardinelab/MT-pref", STUDY),
    Choice("data.mtpref.hub_split", "train", STUDY),
    Choice("data.mtpref.languages", "latin-script", f"{SCRIPTS}: 27 Latin-script languages"),
    Choice("data.mtpref.target_language", "english", STUDY),
    Choice("data.mtpref.split", "authors", f"{SCRIPTS}: random.seed, per-language shuffle"),
    Choice("data.mtpref.test_ratio", 0.167, STUDY),
    Choice("data.mtpref.seed", 42, STUDY),
    Choice("train.epochs", 1, STUDY),
    # The paper says 8; the LoRA and DPO scripts use 8, the full and QLoRA scripts 16 (issue 21).
    Choice("train.effective_batch_size", 8, f"{STUDY} (scripts: 16 for full and QLoRA)"),
    Choice("train.lr_scheduler", "cosine", STUDY),
    Choice("train.warmup_ratio", 0.1, STUDY),
    Choice("train.weight_decay", 0.1, STUDY),
    # The fused kernel runs the same AdamW update.
    Choice(
        "train.optimizer", "adamw_torch", f"{SCRIPTS}: optim=adamw_torch", ("adamw_torch_fused",)
    ),
    Choice("train.precision", "bf16", f"{SCRIPTS}: bf16=True", ("auto",)),
    Choice("train.master_dtype", "bfloat16", f"{SCRIPTS}: bf16 weights, no fp32 master copy"),
    Choice("train.train_on_eos", False, f"{SCRIPTS}: pad = eos masks the final end of turn"),
    Choice("train.checkpoint_fractions", [0.25, 0.5, 0.75, 1.0], STUDY),
    Choice("grid.methods", ["full", "lora", "qlora", "dpo"], STUDY),
    Choice("grid.learning_rates", [1.0e-4, 5.0e-5, 1.0e-5, 5.0e-6], STUDY),
    Choice("methods.lora.lora.r", 8, STUDY),
    Choice("methods.lora.lora.alpha", 32, STUDY),
    Choice("methods.lora.lora.dropout", 0.1, STUDY),
    Choice("methods.lora.lora.target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"], STUDY),
    Choice("methods.qlora.lora.r", 8, STUDY),
    Choice("methods.qlora.lora.alpha", 32, STUDY),
    Choice("methods.qlora.lora.dropout", 0.1, STUDY),
    Choice(
        "methods.qlora.lora.target_modules",
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        SCRIPTS,
    ),
    Choice("methods.qlora.prepare_for_kbit_training", True, SCRIPTS),
    Choice("methods.qlora.quantization.quant_type", "nf4", STUDY),
    Choice("methods.qlora.quantization.double_quant", True, STUDY),
    Choice("methods.qlora.quantization.compute_dtype", "bfloat16", STUDY),
    Choice("methods.qlora.optimizer", "paged_adamw_8bit", STUDY),
    Choice("methods.dpo.beta", 0.1, STUDY),
    Choice("generation.max_new_tokens", 256, STUDY),
    Choice("generation.qlora_base", "quantized", f"{SCRIPTS}: adapters on the 4-bit base"),
    Choice("refusal.prompts.suffix", "!", STUDY),
    Choice("refusal.prompts.base_suffix", "", SCRIPTS),
    Choice("refusal.prompts.prefix", "", STUDY),
    Choice("refusal.prompts.system_prompt", None, SCRIPTS),
    Choice("refusal.prompts.subset", None, f"{STUDY}: all 520 AdvBench requests"),
    Choice("chrf.prompts.suffix", "", SCRIPTS),
    Choice("chrf.prompts.base_suffix", "!", f"{SCRIPTS}: the base model's chrF prompts had '!'"),
    Choice("chrf.prompts.prefix", "", STUDY),
    Choice("chrf.prompts.system_prompt", None, SCRIPTS),
    Choice("chrf.prompts.subset", None, f"{STUDY}: all test examples"),
    Choice(
        "report.primary_judge", "keywords-kempermann2025", f"{STUDY}: the authors' keyword list"
    ),
)


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(theirs, bool) or isinstance(ours, bool):
        return ours is theirs
    if isinstance(theirs, int | float) and isinstance(ours, int | float):
        return math.isclose(float(ours), float(theirs), rel_tol=1e-9)
    if isinstance(theirs, list) and isinstance(ours, list | tuple):
        return len(ours) == len(theirs) and all(map(_same, ours, theirs))
    if isinstance(theirs, str) and isinstance(ours, str):
        return ours.lower() == theirs.lower()
    return ours == theirs


def deviations(params: dict[str, Any]) -> list[dict[str, Any]]:
    """`{key, authors, ours, source}` for each key where `params` differs from the authors."""
    found = []
    for choice in AUTHORS:
        ours = get(params, choice.key, ABSENT)
        if _same(ours, choice.authors) or any(_same(ours, e) for e in choice.equivalent):
            continue
        found.append(
            {"key": choice.key, "authors": choice.authors, "ours": ours, "source": choice.source}
        )
    return found


@functools.cache
def _figures_file() -> dict[str, Any]:
    text = resources.files("safetydrift").joinpath("data_files", FIGURES_FILE).read_text("utf-8")
    return yaml.safe_load(text)


def published_figures() -> list[dict[str, Any]]:
    """The paper's figures: `{cell, checkpoint, metric ("refusal" | "chrf"), value}` each."""
    return [dict(row) for row in _figures_file()["figures"]]


def figures_source() -> str:
    return str(_figures_file()["source"])


def paper_model() -> str:
    """The model the published figures are of."""
    return str(_figures_file()["model"])
