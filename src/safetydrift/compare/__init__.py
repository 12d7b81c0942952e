"""Paired comparison of two sets of results (folders or git revisions), or of each cell with base.

A results folder holds what the pipeline writes: `metrics/refusal/CELL.json` and
`metrics/chrf/CELL.json` (rates and scores), `evals/refusal/CELL.jsonl` (one judge verdict per
prompt) and `generations/chrf/CELL/ckpt-XXX.jsonl` (one translation per sentence). Tests need the
per-prompt files on both sides; prompts are matched by their `id`. Whatever one side has and the
other lacks is listed as missing, never compared with zero.

The modules:

- `results`: one results folder read, its metrics files checked against its per-prompt files;
- `pairing`: the two sides' cells, checkpoints and judges paired and tested (`compare_results`,
  `compare_metrics`, `compare_to_base`), with the test settings and what is missing;
- `revisions`: a side given as a git revision, its results written to a temporary folder, and
  `compare_paths`, the command's entry point for folders or revisions;
- `table`: the fixed-width table the command prints, and each comparison's sentence.

This file imports none of them: an importer names the module that holds what it uses.
"""
