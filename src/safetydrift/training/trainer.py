"""TRL's trainer for one cell: SFTTrainer for full, lora and qlora (LoRA through PEFT), DPOTrainer
with a frozen reference model for dpo, on rows already tokenized in `prompt.format`
(`safetydrift.training.examples`), with the study's TrainingArguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetydrift.models import load_tokenizer
from safetydrift.params import ParamError
from safetydrift.training.examples import (
    TrainingExample,
    count_preference_truncation,
    dpo_rows,
    fit_to_max_length,
    sft_rows,
)
from safetydrift.training.model import (
    check_target_modules,
    compile_blocks,
    load_training_model,
    peft_config,
    use_bf16,
    use_compile,
    use_cuda_graphs,
)
from safetydrift.training.settings import TrainSettings

# datasets, TRL and safetydrift.fastpaths.cudagraphs (which imports torch) are imported where they
# are used (import cost: safetydrift/training/__init__.py).


def trainer_arguments(settings: TrainSettings, output_dir: Path, bf16: bool) -> dict[str, Any]:
    """TrainingArguments shared by the SFT and DPO configs."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.per_device_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler,
        "warmup_steps": settings.warmup_ratio,  # a float below 1 is a ratio of the total steps
        "weight_decay": settings.weight_decay,
        "optim": settings.optimizer,
        "bf16": bf16,
        "fp16": False,
        "seed": settings.seed,
        "data_seed": settings.seed,
        "logging_steps": 1,
        "logging_nan_inf_filter": False,  # a diverged run must show its NaN, not an average
        "save_strategy": "no",  # checkpoints are written by CheckpointWriter, as safetensors
        "report_to": "none",  # metrics go to the stage's own MLflow run
        "gradient_checkpointing": settings.gradient_checkpointing,
        "max_length": settings.max_length,
        "dataloader_num_workers": 0,
        # Padded positions are masked out of attention and loss: the loss does not change.
        "pad_to_multiple_of": settings.pad_to_multiple_of,
        "remove_unused_columns": True,
        "disable_tqdm": False,
    }


def build_trainer(
    settings: TrainSettings, base_dir: Path, pairs: Sequence[TrainingExample], work_dir: Path
):
    import datasets  # import cost: training/__init__.py

    bf16 = use_bf16(settings)
    graphed = use_cuda_graphs(settings)  # a refused setting fails before the model loads
    model = load_training_model(base_dir, settings, bf16)
    check_target_modules(model, settings)
    compiled = use_compile(settings)
    if compiled:
        compile_blocks(model, settings.compile_mode)
    tokenizer = load_tokenizer(base_dir)
    common = trainer_arguments(settings, work_dir, bf16)
    peft = peft_config(settings) if settings.lora else None
    if settings.trainer == "dpo":
        from trl import DPOConfig, DPOTrainer  # import cost: training/__init__.py

        config = DPOConfig(**common, beta=settings.beta, padding_free=settings.padding_free)
        rows = dpo_rows(pairs, tokenizer, settings.prompt_format)
        truncation = count_preference_truncation(rows, settings.max_length)
        dataset = datasets.Dataset.from_list(rows)
        # The frozen reference model, loaded as TRL would (the base weights in the policy's
        # dtype), so that its blocks can be compiled too.
        reference = load_training_model(base_dir, settings, bf16)
        if compiled:
            compile_blocks(reference, settings.compile_mode)
        trainer = pretokenized_dpo_trainer(DPOTrainer)(
            model=model,
            ref_model=reference,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.truncation = truncation
        return trainer
    from trl import SFTConfig, SFTTrainer  # import cost: training/__init__.py

    if settings.padding_free:
        # TRL does not truncate padding-free batches; MT-Pref sentences are far below max_length.
        common["max_length"] = None
    config = SFTConfig(
        **common,
        completion_only_loss=True,
        padding_free=settings.padding_free,
        packing=False,  # packing would change how many examples make a step
    )
    # Counted here, where the prompt format is applied; an example whose answer would be cut
    # away entirely is left out now rather than by TRL, so that the steps are counted right.
    rows, truncation = fit_to_max_length(
        sft_rows(pairs, tokenizer, settings.prompt_format, settings.train_on_eos),
        common["max_length"],
    )
    if not rows:
        raise ParamError(
            f"params.yaml: `train.max_length` ({settings.max_length}) leaves no example an answer "
            "token to train on: every prompt fills it"
        )
    dataset = datasets.Dataset.from_list(rows)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft,
    )
    trainer.truncation = truncation
    if compiled and peft is not None:
        # With frozen embeddings the first block's input does not require grad and every other
        # block's does: two graphs to compile where full fine-tuning has one. Making the
        # embedding output require grad costs one block's input gradient per step.
        trainer.model.enable_input_require_grads()
    if graphed:
        # An optional fast path (safetydrift.fastpaths), loaded only when it records.
        from safetydrift.fastpaths.cudagraphs import GraphedBackbone, backbone_of

        trainer.graphed_backbone = GraphedBackbone(
            backbone_of(trainer.model), settings.per_device_batch_size
        )
    return trainer


def pretokenized_dpo_trainer(dpo_trainer_class):
    """TRL's DPOTrainer, taking rows already tokenized in `prompt.format` as they are (TRL would
    tokenize text again, adding the tokenizer's BOS to a format that writes its own)."""

    class PretokenizedDPOTrainer(dpo_trainer_class):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return PretokenizedDPOTrainer
