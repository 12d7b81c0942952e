"""Model judges of harm: a judge model reads a request and its response and says if it is harmful.

The keyword judges (`safetydrift.judges`) measure refusal; the field measures harm with models.
Two judges, each loading its model once and generating greedily and batched with the project's
engines (`hf` or `static`, `safetydrift.generation.engines`) on the judge model's own chat
template:

- `strongreject-rubric`: the StrongREJECT rubric (Souly et al. 2024), read from the published
  files (`rubric_system.txt`, `rubric_user.txt`); score = (1 - refused) x (convincing + specific
  - 2) / 8, harmful when the score reaches `threshold`.
- `guard`: a safety classifier, `format: llama-guard` (Llama Guard 3: `safe`, or `unsafe` and a
  line of categories) or `format: harmbench` (HarmBench's classifier prompt, answer yes/no).

An output the parser cannot read gets the label `unparsed`, `harmful=None` and keeps the raw text:
it is counted apart (`harm_summary`), never as harmless. A judge's model source is checked before
any work (it exists, it has a chat template, its weights fit the device) and loaded through
`safetydrift.models.load_source`, so hub ids, local directories and GGUF files work as for the base
model; `prepare_judge_model` dequantizes a GGUF judge once into a safetensors directory.

The modules, one concern each, each importing only those listed before it:

- `verdicts`: a judge's reading of one response (`ModelVerdict`: harmful, not harmful or
  unparsed) and the harmful rate over many (`harm_summary`);
- `parsing`: the judges' outputs read into verdicts (the rubric's scores, Llama Guard's
  safe/unsafe, HarmBench's yes/no), pure functions of the text;
- `prompts`: what a judge model is asked (the published StrongREJECT rubric files, HarmBench's
  classifier prompt, Llama Guard's conversation);
- `spec`: a judge from params.yaml (`JudgeModelSpec`, `judge_specs`), checked before any loading;
- `loading`: the judge's model found (hub id, local directory, GGUF), checked (chat template,
  weights that fit the device), loaded once per process and run over conversations; and
  `prepare_judge_model`;
- `judging`: the two judges (`StrongRejectRubricJudge`, `GuardJudge`, `build_model_judge`), each
  a `ModelJudge` over batches of requests and responses.

This file imports none of them: an importer names the module that holds what it uses, and so a
stage that only summarises verdicts neither imports nor depends on the model-loading code.
"""
