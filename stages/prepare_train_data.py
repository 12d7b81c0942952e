"""DVC stage `prepare_train_data`: the chat kind's training conversations into
data/chat/train.jsonl and stats.json (`train_data`, docs/study.md, "Training data").

With `train_data.kind: mtpref` the train stage reads prepare_mtpref's pairs instead, and this
stage writes an empty train.jsonl and says so in stats.json: it reads no data and loads nothing.
"""

from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.chat_data import CHAT_DIR, ChatDataSpec, data_kind, prepare_chat_data
from safetydrift.files import write_json, write_jsonl
from safetydrift.params import get, load_params
from safetydrift.stage import declared_params, run_stage, study_name

PARAMS = ["train_data"]


def main(params: dict[str, Any], out_dir: Path = CHAT_DIR) -> dict[str, Any]:
    values = get(params, "train_data")
    kind = data_kind(values)
    spec = ChatDataSpec.from_params(values) if kind == "chat" else None  # checked before tracking
    with tracking.stage_run(
        study_name(params), "prepare_train_data", declared_params(params, PARAMS)
    ) as run:
        if spec is None:
            stats = {
                "kind": kind,
                "train_rows": 0,
                "note": "train_data.kind is mtpref: training reads data/mtpref/train.jsonl",
            }
            write_jsonl(out_dir / "train.jsonl", [])
            write_json(out_dir / "stats.json", stats)
            return stats
        stats = prepare_chat_data(spec, out_dir)
        run.log_metrics(
            {
                "train_rows": stats["train_rows"],
                # MLflow's names allow no brackets: `mix[0]` is logged as `rows_used.mix.0`.
                **{
                    f"rows_used.{name.replace('[', '.').rstrip(']')}": s["rows_used"]
                    for name, s in stats["sources"].items()
                },
            }
        )
        run.log_artifact(out_dir / "stats.json")
    return stats


if __name__ == "__main__":
    run_stage(lambda: main(load_params()))
