"""benchmarks/bench_generation.py on the tiny model, on the CPU: the static decoder within its cache
budget against the same decoder keeping every cache, and against it keeping the rows that stopped,
as the GPU measurement runs them."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_the_cache_budget_changes_no_output(base_model_dir, tmp_path):
    out = tmp_path / "generation.json"
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "bench_generation.py"),
            "--model", str(base_model_dir), "--engines", "static,static-unbounded,static-whole",
            "--batch-size", "8", "--prompt-tokens", "10-150", "--limit", "32",
            "--max-new-tokens", "8", "--dtype", "float32", "--device", "cpu", "--out", str(out),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    static, unbounded, whole = json.loads(out.read_text())
    assert (static["engine"], unbounded["engine"]) == ("static", "static-unbounded")
    assert static["prompts"] == unbounded["prompts"] == 32
    # Tiny caches stay far inside the budget here: what is checked is the benchmark's comparison
    # (dropping caches past the budget: tests/test_decoding.py).
    assert unbounded["rows_differing_from_static"] == 0
    assert static["passes_agree"] and unbounded["passes_agree"]
    assert "static-unbounded" in done.stdout
    assert whole["rows_differing_from_static"] == 0 and whole["passes_agree"]
    # Three passes of one batch each, every step counted with the rows it ran.
    assert static["decoder_stats"]["batches"] == whole["decoder_stats"]["batches"] == 3 * 4
    assert 0 < static["decoder_stats"]["row_steps"] <= whole["decoder_stats"]["row_steps"]
