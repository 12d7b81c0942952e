"""Greedy generation for every checkpoint of a cell, shared by the refusal and chrF measurements.

The base model is loaded once per process; each checkpoint's weights (full weights, or a LoRA
adapter) are then copied into the same tensors, so nothing merged is ever written to disk and
whatever the engine built for one checkpoint (CUDA graphs, caches) serves the next.

Engines: `hf` (transformers' `generate` in length-sorted, left-padded batches; always works),
`static` (our static-cache decode loop with CUDA graphs, `safetydrift.fastpaths.decoding`) and
`vllm` (when installed). All are greedy, up to `max_new_tokens`, on the prompts `prompt.format`
renders (the text training encodes too).

The modules, one concern each, each importing only those listed before it:

- `settings`: `generation.*` from params.yaml (`GenerationSettings`);
- `prompts`: a measurement's prompts chosen, framed as conversations (`PromptSettings`) and
  encoded (`encode_conversations`);
- `engines`: the `hf` and `static` engines (`build_engine`) and where a turn ends;
- `checkpoints`: a cell's checkpoints found on disk, and the `ModelHolder` that copies each one's
  weights into the resident base model (on the 4-bit base for QLoRA, when asked);
- `run`: a whole stage, every checkpoint on one set of prompts (`generate_for_checkpoints`), with
  vLLM's path beside it.

This file imports none of them: an importer names the module that holds what it uses, and so a
stage that only reads the settings does not depend on the engines. No module here imports torch,
transformers or PEFT at its top (each says why).
"""
