"""The study's report: figures, tables, DVC metrics/plots data and provenance under `reports/`.

Everything is built from the metric files the evaluation stages wrote, whatever subset of the
grid exists so far: a cell or checkpoint without metrics is reported as missing, never as zero,
so a report drawn while the grid is still running cannot be mistaken for a finished one.

The modules, one concern each; at run time each imports only those listed before it, and this
file none:

- `results`: the metric files read into the grid's results (`collect_results`), the report's
  settings, Figure 2's series;
- `seeds`: mean and spread over the seeds of `grid.seeds`, each seed drawn;
- `responses`: what the responses are (response classes, harmful answers);
- `judges`: each judge against human labels and against the others;
- `evaluation_sets`: a table per evaluation set, harm against helpfulness (Figure 4);
- `paired`: paired tests against the base model and between methods;
- `figures`: Figures 1b and 2, and what every figure shares (size, method styles, saving);
- `tables`: results.csv, metrics.json and the `dvc plots` data and template;
- `provenance`: what produced the report (`collect_provenance`);
- `markdown`: report.md's sections (`render_markdown`), secrets redacted;
- `write`: `write_report`, which writes them all.
"""
