"""DVC stage `prepare_mtpref`: MT-Pref into data/mtpref/{train,test}.jsonl and stats.json.

`data.mtpref.source: null` (a study that trains on chat data) reads nothing and writes empty
splits: with no translation test set the chrF stages measure nothing and say so.
"""

from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.data.mtpref import prepare_mtpref
from safetydrift.data.sources import Source
from safetydrift.files import write_json, write_jsonl
from safetydrift.params import get, load_params
from safetydrift.stage import MTPREF_DIR, declared_params, run_stage, study_name

PARAMS = ["data.mtpref"]
NO_TRANSLATION_DATA = "no translation data (`data.mtpref.source` is null): chrF is not measured"


def main(params: dict[str, Any], out_dir: Path = MTPREF_DIR) -> dict[str, Any]:
    mtpref = get(params, "data.mtpref")
    with tracking.stage_run(
        study_name(params), "prepare_mtpref", declared_params(params, PARAMS)
    ) as run:
        if mtpref.get("source") is None:
            stats = {
                "source": None,
                "skipped": NO_TRANSLATION_DATA,
                "train_rows": 0,
                "test_rows": 0,
            }
            write_jsonl(out_dir / "train.jsonl", [])
            write_jsonl(out_dir / "test.jsonl", [])
            write_json(out_dir / "stats.json", stats)
            return stats
        stats = prepare_mtpref(
            Source(str(mtpref["source"]), mtpref.get("revision")),
            split=str(mtpref.get("hub_split", "train")),
            languages=mtpref["languages"],
            target_language=str(mtpref.get("target_language", "english")),
            test_ratio=float(mtpref["test_ratio"]),
            seed=int(mtpref["seed"]),
            out_dir=out_dir,
            split_method=str(mtpref.get("split", "datasets")),
        )
        counts = ("rows_read", "rows_kept", "rows_dropped", "train_rows", "test_rows")
        run.log_metrics({k: stats[k] for k in counts})
        run.set_tags(
            {
                "data.sha256": stats.get("sha256"),
                "data.revision": stats.get("resolved_revision") or stats.get("revision"),
            }
        )
        run.log_artifact(out_dir / "stats.json")
    return stats


if __name__ == "__main__":
    run_stage(lambda: main(load_params()))
