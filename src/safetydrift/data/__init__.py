"""The study's data: MT-Pref translation pairs and AdvBench harmful requests.

Sources are a hub id (loaded with `datasets`, pinned by `revision`), or a local file. Local files
are read here rather than through `datasets` so that a bad row is reported by file and line.

The modules:

- `sources`: where a data set comes from (`Source`: a local file or a pinned hub id), its rows
  read, the hub checked before it is asked for data, and `DataError`;
- `mtpref`: MT-Pref's translation pairs filtered (the Tower prompt, or the authors' pattern) and
  split into train and test (the authors' procedure, or `datasets`' split per language);
- `advbench`: AdvBench's harmful requests, from the hub, a file or a URL of the original CSV.

This file imports none of them: an importer names the module that holds what it uses, so a
stage that reads AdvBench does not depend on MT-Pref's code.
"""
