"""`safetydrift grid`: the study's whole grid through `dvc repro`, cell by cell, many at once.

One cell of the stand-in study leaves an H100 mostly idle: a training step of a 0.5B model at
batch 8, or one decoding step, is bound by Python and kernel launches, not by the GPU. So the
grid runs cells side by side, each a Ray task that holds a share of a GPU (`--gpus-per-cell`:
0.25 puts four cells on one GPU; `train.num_processes` whole GPUs for a cell trained on several)
and sees only its GPUs: Ray sets the task's CUDA_VISIBLE_DEVICES, which its `dvc repro` and
every stage under it inherit. Ray starts on this machine by itself, bound to 127.0.0.1, or joins
a cluster (`--address`); a task that fails is run again (`--retries`), after the others.

DVC takes a lock per workspace, so each cell runs in its own copy of the workspace's pipeline
files (under `.dvc/tmp/grid/`, which neither DVC nor git looks into), configured to share the
main workspace's DVC cache and MLflow store. DVC's run-cache records every stage a cell runs;
the `dvc repro` that follows in the main workspace finds each of them there and checks their
outputs out instead of running them, so the main workspace ends with the same `dvc.lock` a
one-at-a-time run writes. A cell on another machine of a cluster keeps its own cache there and
pushes what it ran to the DVC remote (`dvc push --run-cache`); the main workspace pulls the
run-cache and the outputs from it (docs/running.md, "Across machines").

Order: the shared inputs first (prepared data, base model), in the main workspace. One at a time,
the base model's evaluations and then the cells, seed by seed in `grid.seeds` order (a whole
grid, then the next seed's), within a seed those at `report.fixed_lr` (Figure 1) first and
then the other learning rates, largest first, so that a run cut short has the figures' most
telling cells; one at a time needs no Ray and no copies. Side by side, the slowest methods first
and in turns (QLoRA's eager 4-bit training, LoRA, DPO, full fine-tuning; then again; the base
model last), so that the last cells to finish are short ones and one method's cells do not all
want the same resource at once. Each finished cell is restored into the main workspace at once,
while the other cells run; then the report, from whatever metrics exist. A run cut short keeps
every finished cell, and running the command again resumes: DVC skips what `dvc.lock` or its
run-cache has. A cell that fails is named at the end and does not stop the others.

Before any training, the disk the cells will fill is estimated (`safetydrift.disk`) and a disk
too small stops the run.

The modules, one concern each:

- `jobs`: a `Job` (one `safetydrift repro` of some targets), run here with its output prefixed
  by its name and kept in `reports/timings/JOB.log`, and a failed attempt's files kept;
- `plan`: the jobs and their order (the cells of params.yaml's grid, the prepare stages, the
  slowest-first order of cells side by side);
- `workspaces`: each cell's copy of the pipeline files sharing the main DVC cache, the DVC
  commands on it, and a finished cell restored into the main workspace from DVC's run-cache;
- `placement`: Ray started here (bound to 127.0.0.1) or joined, each cell's GPU share, how many
  cells run at once, and the checks a cluster must pass;
- `ray_tasks`: each cell as a Ray task in its workspace, retried after the others;
- `run`: `run_grid`, the whole command (the disk estimate included), and its summary of times.

This file imports none of them: an importer names the module that holds what it uses. No module
here imports ray at its top: `placement.start_ray` must set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
before ray is first imported, which binds Ray to 127.0.0.1, and the import costs seconds.
"""
