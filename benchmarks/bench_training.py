"""Training throughput of each method at the study's effective batch of 8, and the loss curve.

Runs the library's own `train_cell` (the train stage without DVC and MLflow) on the first
`--examples` rows of the train split, once per method and variant:

- `plain`: padded batches, PyTorch's for-loop AdamW and eager kernels, as TRL's defaults train;
- `eager`: `plain` with fused AdamW (what `compile: false` trains);
- `fast`: the pipeline's GPU defaults: padded batches, fused AdamW, decoder blocks compiled;
- `packed`: `fast` with padding-free batches (each batch packed into one row);
- `padded`: `fast` with each batch padded to a multiple of 64 tokens;
- `reduce-overhead`: `padded` with the compiled blocks replayed as CUDA graphs by torch.compile
  (`compile_mode: reduce-overhead`), one recording per block and padded length. Full weights
  only: with LoRA the first backward crashed the process on an H100, so the train params refuse
  that pairing (called `graphs` in RESULTS.md's earlier runs);
- `graphed`: eager kernels, batches padded to a multiple of 64, and the whole decoder's forward
  and backward replayed as one CUDA graph each (`train.cuda_graphs`), one recording per padded
  length; `graphed-32` pads to a multiple of 32 (less padding, more recordings);
  `graphed-compiled` records the compiled blocks instead of eager ones.

`preset` trains with the params file's settings as they are (what the train stage does).

All variants see the same examples in the same order with the same seed, so their per-step
losses must agree up to floating-point noise; the script reports the largest difference from
the first variant listed.

    python benchmarks/bench_training.py --base models/base --train data/mtpref/train.jsonl \
        --examples 800 --methods full,lora,qlora,dpo --out bench-training.json

`--profile 100:5` records steps 100-104 of every run with `torch.profiler` and prints where a
step's time goes: the host's wall time per step, the GPU's busy time per step, kernel launches
per step, and the operators with the most host and GPU time (written to `--out`'s folder too).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import yaml

from safetydrift.data.mtpref import read_pairs
from safetydrift.training.run import train_cell
from safetydrift.training.settings import train_settings

EAGER = {
    "compile": False,
    "compile_mode": "default",
    "pad_to_multiple_of": None,
    "cuda_graphs": False,
}
FAST = {"padding_free": False, "optimizer": "adamw_torch_fused", **EAGER, "compile": True}
PADDED = {**FAST, "pad_to_multiple_of": 64}
GRAPHED = {**FAST, "compile": False, "pad_to_multiple_of": 64, "cuda_graphs": True}
VARIANTS = {
    "preset": {},  # the params file's own settings
    "plain": {**FAST, **EAGER, "optimizer": "adamw_torch"},
    "eager": {**FAST, **EAGER},
    "fast": FAST,
    "packed": {**FAST, "padding_free": True},
    "padded": PADDED,
    "reduce-overhead": {**PADDED, "compile_mode": "reduce-overhead"},
    "graphed": GRAPHED,
    "graphed-32": {**GRAPHED, "pad_to_multiple_of": 32},
    "graphed-compiled": {**GRAPHED, "compile": True},
}
# What a variant decides for every method, over a preset's per-method settings.
METHOD_KEYS = ("compile", "compile_mode", "cuda_graphs")


def profiler_callback(start: int, count: int, label: str, out_dir: Path | None):
    """A TrainerCallback that profiles steps start..start+count-1 and prints a summary."""
    import time

    import torch
    from transformers import TrainerCallback

    def synchronize() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.profiler = None
            self.wall = 0.0
            self.summary: dict = {}

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == start - 1:
                synchronize()
                self.profiler = torch.profiler.profile(
                    activities=[
                        torch.profiler.ProfilerActivity.CPU,
                        torch.profiler.ProfilerActivity.CUDA,
                    ]
                )
                self.profiler.__enter__()
                self.wall = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is not None and state.global_step == start + count - 1:
                synchronize()
                wall = time.perf_counter() - self.wall
                self.profiler.__exit__(None, None, None)
                self.report(wall)
                self.profiler = None

        def report(self, wall: float) -> None:
            events = self.profiler.key_averages()
            # Kernels only: an operator's row repeats the time of the kernels it launched.
            gpu_us = sum(
                e.self_device_time_total
                for e in events
                if e.device_type == torch.autograd.DeviceType.CUDA
            )
            launches = sum(
                e.count
                for e in events
                if e.key
                in (
                    "cudaLaunchKernel",
                    "cuLaunchKernel",
                    "cuLaunchKernelEx",
                    "cudaLaunchKernelExC",
                    "cudaGraphLaunch",
                )
            )
            self.summary = {
                "run": label,
                "steps": count,
                "host_ms_per_step": round(1000 * wall / count, 2),
                "gpu_busy_ms_per_step": round(gpu_us / 1000 / count, 2),
                "kernel_launches_per_step": round(launches / count),
            }
            print(json.dumps({"profile": self.summary}), flush=True)
            by_cpu = events.table(sort_by="self_cpu_time_total", row_limit=25)
            by_gpu = events.table(sort_by="self_device_time_total", row_limit=25)
            print(by_cpu, by_gpu, sep="\n", flush=True)
            if out_dir is not None:
                (out_dir / f"profile-{label}.txt").write_text(
                    json.dumps(self.summary) + "\n" + by_cpu + "\n" + by_gpu
                )

    return StepProfiler()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--train", type=Path, default=Path("data/mtpref/train.jsonl"))
    parser.add_argument("--params", type=Path, default=Path("presets/paper.yaml"))
    parser.add_argument("--examples", type=int, default=800)
    parser.add_argument("--methods", default="full,lora,qlora,dpo")
    parser.add_argument("--variants", default="plain,fast,packed")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--profile", help="START:COUNT, e.g. 100:5: profile these steps of every run"
    )
    args = parser.parse_args()
    profile = tuple(int(x) for x in args.profile.split(":")) if args.profile else None

    params = yaml.safe_load(args.params.read_text())
    pairs = read_pairs(args.train)[: args.examples]
    results = []
    variants = args.variants.split(",")
    for method in args.methods.split(","):
        losses = {}
        for variant in variants:
            run_params = copy.deepcopy(params)
            run_params["train"].update(VARIANTS[variant])
            method_params = run_params["methods"].setdefault(method, {})
            if "quantization" not in method_params and variant != "preset":
                # The variant decides, not a preset's per-method settings (bitsandbytes' 4-bit
                # layers stay eager whatever the variant).
                method_params.update({k: VARIANTS[variant][k] for k in METHOD_KEYS})
            settings = train_settings(run_params, method, args.lr)
            callbacks = []
            if profile:
                out_dir = args.out.parent if args.out else None
                callbacks.append(profiler_callback(*profile, f"{method}-{variant}", out_dir))
            with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as work:
                result = train_cell(
                    settings, args.base, pairs, Path(out) / "cell", Path(work), callbacks=callbacks
                )
            losses[variant] = result.losses
            row = {
                "method": method,
                "variant": variant,
                "examples": result.examples,
                "steps": result.steps,
                "seconds": round(result.train_seconds, 2),
                "examples_per_second": round(result.examples_per_second, 1),
                "steady_examples_per_second": round(result.steady_examples_per_second or 0, 1),
                "tokens_per_second": round(result.tokens_per_second or 0, 0),
                "peak_memory_gib": round((result.peak_memory_bytes or 0) / 2**30, 2),
                "final_loss": round(result.final_loss, 4),
            }
            if result.cuda_graphs:
                row["cuda_graphs"] = result.cuda_graphs
            if callbacks and callbacks[0].summary:
                row["profile"] = callbacks[0].summary
            if variant != variants[0]:
                pairs_of_losses = zip(losses[variants[0]], result.losses, strict=False)
                row["loss_reference"] = variants[0]
                row["max_loss_difference"] = round(max(abs(a - b) for a, b in pairs_of_losses), 4)
            print(json.dumps(row), flush=True)
            results.append({**row, "losses": result.losses})  # per step, in --out only
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    header = ("method", "variant", "ex/s", "steady", "tok/s", "peak GiB", "loss", "Δloss")
    print("\n" + " ".join(f"{h:>9}" for h in header))
    for r in results:
        cells = (
            r["method"],
            r["variant"],
            r["examples_per_second"],
            r["steady_examples_per_second"],
            r["tokens_per_second"],
            r["peak_memory_gib"],
            r["final_loss"],
            r.get("max_loss_difference", ""),
        )
        print(" ".join(f"{c:>9}" for c in cells))


if __name__ == "__main__":
    main()
