"""Optional fast paths: our own code where a library path exists and was too slow at our scale.

Each fast path replaces a library path that stays available and is what runs whenever the fast
path is switched off, or when the installed torch/transformers are outside the versions it was
verified with (`safetydrift.compat`: one warning line, then the library path):

- `decoding` (`StaticCacheDecoder`): greedy generation on a static KV cache, the decode step
  replayed as a CUDA graph. It replaces transformers' `generate`; against `generate`'s own
  static cache (`cache_implementation="static"`) on an H200, an AdvBench pass took 1.47 s warm
  and 3.6 s cold against 3.56 s and 33.9 s. On with `generation.backend: static`;
  `generation.backend: hf` (`generate` with its dynamic cache) is the library path.
  `generation.deterministic` keeps the static cache but takes eager steps.
- `cudagraphs` (`GraphedBackbone`): the training decoder's forward and backward recorded once per
  batch shape as CUDA graphs and replayed under TRL's trainer. It replaces eager or
  `torch.compile`d decoder blocks (`train.compile`, `compile_mode: reduce-overhead` for
  torch.compile's own CUDA graphs). On with `train.cuda_graphs: auto` (where it applies: a
  CUDA GPU, full, LoRA or QLoRA, padded lengths; docs/design.md) or `true`; `false`, or
  `train.deterministic`, is the library path.

The pipeline imports these modules only where a fast path runs: a run with both switched off
never loads them. Benchmarks against the library paths: `benchmarks/RESULTS.md`, section "Fast
paths against the library paths" (it points to the measured sections it draws on).
"""
