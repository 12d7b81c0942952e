"""The report: figures, tables, DVC metrics/plots data and provenance from fixture metric files."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from safetydrift.cells import (
    BASE_CELL,
    Cell,
    cell_name,
    checkpoint_label,
    grid_cells,
    parse_cell,
)
from safetydrift.paper import paper_model
from safetydrift.report.evaluation_sets import SetResults, _from_metrics, helpfulness_points
from safetydrift.report.figures import lr_curves_figure, tradeoff_figure, tradeoff_points
from safetydrift.report.markdown import redact_secrets
from safetydrift.report.provenance import collect_provenance
from safetydrift.report.results import CHRF, REFUSAL, collect_results, lr_curves
from safetydrift.report.tables import dvc_plot_template
from safetydrift.report.write import write_report

JUDGES = ("keywords-kempermann2025", "prefixes-zou2023", "regex-enais2025")
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
STEPS = (148, 296, 444, 591)
METHODS = ["lora", "dpo"]
RATES = [1e-4, 1e-5]
SEED = 1234
MISSING_CELL = "dpo-1e-05-1234"  # still "running": neither metric file exists
BASE_REFUSAL = 0.979
BASE_CHRF = 20.0


def refusal_rate(cell: Cell, fraction: float, judge: str) -> float:
    """A distinct, recognisable rate per cell, checkpoint and judge."""
    drop = {"lora": 0.1, "dpo": 0.5}[cell.method] * (2.0 if cell.learning_rate > 5e-5 else 1.0)
    offset = JUDGES.index(judge) * 0.01
    return round(BASE_REFUSAL - drop * fraction - offset, 4)


def chrf_value(cell: Cell, fraction: float) -> float:
    top = {"lora": 72.0, "dpo": 40.0}[cell.method]
    return round(top - 10 * (1 - fraction) + (1.0 if cell.learning_rate > 5e-5 else 0.0), 3)


def refusal_file(name, method, lr, points) -> dict:
    """points: [(fraction, step, {judge: rate})]."""
    return {
        "cell": name,
        "method": method,
        "learning_rate": lr,
        "checkpoints": {
            checkpoint_label(fraction): {
                "fraction": fraction,
                "step": step,
                "judges": {
                    judge: {
                        "refusal_rate": rate,
                        "ci_low": round(rate - 0.02, 4),
                        "ci_high": round(min(rate + 0.015, 1.0), 4),
                        "refusals": round(rate * 520),
                        "n": 520,
                    }
                    for judge, rate in rates.items()
                },
            }
            for fraction, step, rates in points
        },
    }


def chrf_file(name, method, lr, points) -> dict:
    """points: [(fraction, step, chrf)]."""
    return {
        "cell": name,
        "method": method,
        "learning_rate": lr,
        "checkpoints": {
            checkpoint_label(fraction): {
                "fraction": fraction,
                "step": step,
                "chrf": value,
                "ci_low": round(value - 1.5, 3),
                "ci_high": round(value + 1.5, 3),
                "n": 942,
            }
            for fraction, step, value in points
        },
    }


def dump(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def make_metrics(metrics_dir: Path) -> None:
    """Base + a 2 × 2 grid (one seed); `dpo-1e-05-1234` has nothing, `lora-1e-05-1234` lacks
    chrF at 75% and 100%."""
    base_rates = {judge: round(BASE_REFUSAL - JUDGES.index(judge) * 0.01, 4) for judge in JUDGES}
    dump(
        metrics_dir / "refusal" / "base.json",
        refusal_file(BASE_CELL, "base", None, [(0.0, 0, base_rates)]),
    )
    dump(
        metrics_dir / "chrf" / "base.json",
        chrf_file(BASE_CELL, "base", None, [(0.0, 0, BASE_CHRF)]),
    )
    for cell in grid_cells(METHODS, RATES, [SEED]):
        if cell.name == MISSING_CELL:
            continue
        points = list(zip(FRACTIONS, STEPS, strict=True))
        refusal_points = [(f, s, {j: refusal_rate(cell, f, j) for j in JUDGES}) for f, s in points]
        dump(
            metrics_dir / "refusal" / f"{cell.name}.json",
            refusal_file(cell.name, cell.method, cell.learning_rate, refusal_points),
        )
        chrf_points = [(f, s, chrf_value(cell, f)) for f, s in points]
        if cell.name == "lora-1e-05-1234":
            chrf_points = chrf_points[:2]
        dump(
            metrics_dir / "chrf" / f"{cell.name}.json",
            chrf_file(cell.name, cell.method, cell.learning_rate, chrf_points),
        )


def make_params(source: str = "tests/fixtures/tiny-chat-model", fixed_lr: float = 1e-4) -> dict:
    return {
        "study": {"name": "fixture"},
        "model": {"source": source, "revision": None, "seed": 0},
        "data": {
            "mtpref": {
                "source": "tests/fixtures/mtpref-tiny.jsonl",
                "split": "train",
                "languages": ["german", "french"],
                "target_language": "english",
                "test_ratio": 0.167,
                "seed": 42,
            }
        },
        "train": {
            "epochs": 1,
            "effective_batch_size": 8,
            "warmup_ratio": 0.1,
            "checkpoint_fractions": list(FRACTIONS),
        },
        "grid": {"methods": METHODS, "learning_rates": RATES, "seeds": [SEED]},
        "methods": {"lora": {"lora": {"r": 8, "alpha": 32}}, "dpo": {"beta": 0.1}},
        "report": {"fixed_lr": fixed_lr, "primary_judge": "keywords-kempermann2025"},
    }


PROVENANCE = {
    "git": {"revision": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
    "dvc_lock": {"report": {"deps": {"metrics/refusal": "aaa.dir"}, "outs": {}}},
    "packages": {"torch": "2.8.0", "bitsandbytes": None},
    "hardware": {"platform": "Linux", "cpu_count": 16, "gpus": []},
    "seeds": {"grid.seeds": [SEED]},
    "params": {"grid": {"seeds": [SEED]}},
}


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    make_metrics(path)
    return path


@pytest.fixture
def report(tmp_path: Path, metrics_dir: Path):
    out = tmp_path / "reports"
    stats = {"rows_read": 120, "rows_kept": 100, "train_rows": 83, "test_rows": 17}
    result = write_report(
        make_params(), metrics_dir, out, data_stats=stats, provenance=copy.deepcopy(PROVENANCE)
    )
    return out, result


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------
# cells.py


def test_cell_names_match_dvc_matrix_names():
    # DVC joins a matrix item's values with `-`, the float by Python's repr: train@lora-5e-05-42.
    assert cell_name("lora", 5e-5, 42) == "lora-5e-05-42"
    assert cell_name("full", 1e-4, 0) == "full-0.0001-0"
    assert Cell("qlora", 1e-5, 7).name == "qlora-1e-05-7"
    assert checkpoint_label(0.0) == "ckpt-000"
    assert checkpoint_label(0.25) == "ckpt-025"
    assert checkpoint_label(1.0) == "ckpt-100"
    assert [c.name for c in grid_cells(["a", "b"], [1e-4, 5e-6], [1, 2])] == [
        "a-0.0001-1",
        "a-0.0001-2",
        "a-5e-06-1",
        "a-5e-06-2",
        "b-0.0001-1",
        "b-0.0001-2",
        "b-5e-06-1",
        "b-5e-06-2",
    ]
    # Results from before the seed axis: METHOD-LR, a cell without a seed.
    assert cell_name("dpo", 5e-6) == "dpo-5e-06" and Cell("lora", 1e-5).name == "lora-1e-05"
    for name, cell in (
        ("lora-5e-05-42", Cell("lora", 5e-5, 42)),
        ("full-0.0001-0", Cell("full", 1e-4, 0)),
        ("dpo-1e-05", Cell("dpo", 1e-5)),  # its rate's own `-`: no seed
        ("full-0.0001", Cell("full", 1e-4)),
    ):
        assert parse_cell(name) == cell and cell.name == name
    for bad in ("lora", "lora-", "lora-fast", "lora-5e-05-x", "lora-1e-05-4.5"):
        with pytest.raises(ValueError, match=f"cell `{bad}`: expected METHOD-LR-SEED"):
            parse_cell(bad)


# --------------------------------------------------------------------------------------------
# Collecting and figures


def test_collect_results_marks_missing_not_zero(metrics_dir: Path):
    results = collect_results(make_params(), metrics_dir)
    assert results.judges == list(JUDGES)
    assert results.missing_cells == ["lora-1e-05-1234", MISSING_CELL]
    dpo = results.rows[MISSING_CELL]
    assert [r.checkpoint for r in dpo] == ["ckpt-025", "ckpt-050", "ckpt-075", "ckpt-100"]
    assert all(r.refusal == {} and r.chrf is None and r.step is None for r in dpo)
    partial = {m.metric: m for m in results.missing if m.cell == "lora-1e-05-1234"}
    assert set(partial) == {CHRF}
    assert partial[CHRF].checkpoints == ("ckpt-075", "ckpt-100")
    assert not partial[CHRF].file_missing
    whole = {m.metric: m for m in results.missing if m.cell == MISSING_CELL}
    assert set(whole) == {REFUSAL, CHRF} and whole[REFUSAL].file_missing


def test_mislabelled_metric_file_is_an_error(metrics_dir: Path):
    path = metrics_dir / "chrf" / "lora-0.0001-1234.json"
    data = json.loads(path.read_text())
    data["cell"] = "lora-1e-05-1234"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="lora-1e-05-1234"):
        collect_results(make_params(), metrics_dir)


def test_tradeoff_points_are_drops_in_points(metrics_dir: Path):
    results = collect_results(make_params(), metrics_dir)
    points, undrawable = tradeoff_points(results, 1e-4)
    assert undrawable == []
    by_method = {p.method: p for p in points}
    assert set(by_method) == {"lora", "dpo"}
    lora = by_method["lora"]
    final = refusal_rate(Cell("lora", 1e-4, SEED), 1.0, JUDGES[0])
    assert lora.drop_points == pytest.approx(100 * (BASE_REFUSAL - final))
    # The drop's interval is the paired one (tests/test_report_paired.py): these metrics come
    # without per-prompt verdicts, and the cell's own interval ignores the base model's.
    assert (lora.drop_low, lora.drop_high) == (None, None)
    assert lora.chrf.value == pytest.approx(chrf_value(Cell("lora", 1e-4, SEED), 1.0))

    # At 1e-5 the dpo cell is missing and lora has no final chrF: neither is drawn as zero.
    points, undrawable = tradeoff_points(results, 1e-5)
    assert points == []
    assert undrawable == ["lora-1e-05-1234", MISSING_CELL]


def test_tradeoff_figure_has_one_labelled_marker_per_method(metrics_dir: Path):
    results = collect_results(make_params(), metrics_dir)
    ax = tradeoff_figure(results, 1e-4).axes[0]
    assert sorted(c.get_label() for c in ax.containers) == ["dpo", "lora"]
    assert sorted(t.get_text() for t in ax.texts) == ["dpo", "lora"]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["dpo", "lora"]

    empty = tradeoff_figure(results, 5e-5).axes[0]
    assert empty.containers == []
    assert any("not in the grid" in t.get_text() for t in empty.texts)


def test_lr_curves_start_at_base_and_skip_missing(metrics_dir: Path):
    results = collect_results(make_params(), metrics_dir)
    refusal = lr_curves(results, REFUSAL)
    assert set(refusal["lora"]) == {1e-4, 1e-5}
    assert set(refusal["dpo"]) == {1e-4}  # dpo-1e-05-1234 has no metrics: no curve, not zeros
    assert set(refusal["lora"][1e-4]) == {SEED}
    lora = refusal["lora"][1e-4][SEED]
    assert [p.percent for p in lora] == [0, 25, 50, 75, 100]
    assert lora[0].estimate.value == BASE_REFUSAL
    assert lora[-1].estimate.value == refusal_rate(Cell("lora", 1e-4, SEED), 1.0, JUDGES[0])
    chrf = lr_curves(results, CHRF)
    assert [p.percent for p in chrf["lora"][1e-5][SEED]] == [0, 25, 50]
    assert chrf["lora"][1e-5][SEED][0].estimate.value == BASE_CHRF


def test_lr_curves_figure_has_a_line_per_learning_rate(metrics_dir: Path):
    results = collect_results(make_params(), metrics_dir)
    figure = lr_curves_figure(results)
    axes = figure.axes
    assert len(axes) == 4  # two rows (refusal, chrF) × two methods
    titles = [ax.get_title() for ax in axes[:2]]
    assert titles == ["lora", "dpo"]
    labels = [[line.get_label() for line in ax.get_lines()] for ax in axes]
    assert labels[0] == ["lr=0.0001", "lr=1e-05"]  # lora refusal
    assert labels[1] == ["lr=0.0001"]  # dpo refusal: 1e-05 missing
    assert labels[2] == ["lr=0.0001", "lr=1e-05"]  # lora chrF
    assert labels[3] == ["lr=0.0001"]
    assert any("missing: lr=1e-05" in t.get_text() for t in axes[1].texts)
    xs = axes[0].get_lines()[0].get_xdata()
    assert list(xs) == [0, 25, 50, 75, 100]


# --------------------------------------------------------------------------------------------
# write_report's outputs


def test_figures_are_real_non_blank_images(report):
    out, result = report
    for key in ("fig1", "fig2"):
        path = result.paths[key]
        assert path.exists() and path.stat().st_size > 0
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        # Drawn on, not a blank canvas: many distinct colours.
        colours = np.unique(image.reshape(-1, image.shape[2]).round(2), axis=0)
        assert len(colours) > 20
    assert result.paths["fig1"] == out / "figures" / "fig1_tradeoff.png"
    assert result.paths["fig2"] == out / "figures" / "fig2_lr_curves.png"
    assert not list(out.rglob("*.partial"))


def test_results_csv_has_every_cell_and_checkpoint(report):
    out, _ = report
    rows = read_csv(out / "results.csv")
    keys = [(r["cell"], r["checkpoint"]) for r in rows]
    expected = [(BASE_CELL, "ckpt-000")] + [
        (c.name, checkpoint_label(f)) for c in grid_cells(METHODS, RATES, [SEED]) for f in FRACTIONS
    ]
    assert keys == expected

    base = rows[0]
    assert base["method"] == "base" and base["learning_rate"] == "" and base["step"] == "0"
    assert float(base["refusal_rate"]) == BASE_REFUSAL
    assert float(base["chrf"]) == BASE_CHRF
    assert float(base["refusal_rate_prefixes-zou2023"]) == pytest.approx(BASE_REFUSAL - 0.01)
    assert base["missing"] == ""

    by_key = {(r["cell"], r["checkpoint"]): r for r in rows}
    row = by_key[("lora-0.0001-1234", "ckpt-050")]
    cell = Cell("lora", 1e-4, SEED)
    assert row["method"] == "lora" and float(row["learning_rate"]) == 1e-4
    assert row["fraction"] == "0.5" and row["step"] == "296"
    assert float(row["refusal_rate"]) == refusal_rate(cell, 0.5, JUDGES[0])
    assert float(row["refusal_ci_low"]) == pytest.approx(refusal_rate(cell, 0.5, JUDGES[0]) - 0.02)
    assert row["refusal_n"] == "520"
    assert float(row["refusal_rate_regex-enais2025"]) == refusal_rate(cell, 0.5, JUDGES[2])
    assert float(row["chrf"]) == chrf_value(cell, 0.5)
    assert float(row["chrf_ci_high"]) == pytest.approx(chrf_value(cell, 0.5) + 1.5)

    for fraction in FRACTIONS:
        missing = by_key[(MISSING_CELL, checkpoint_label(fraction))]
        assert missing["missing"] == "refusal;chrf"
        for column in ("step", "refusal_rate", "refusal_ci_low", "chrf", "chrf_ci_low"):
            assert missing[column] == "", column  # empty, never 0
        assert missing["method"] == "dpo" and float(missing["learning_rate"]) == 1e-5
    partial = by_key[("lora-1e-05-1234", "ckpt-100")]
    assert partial["missing"] == "chrf" and partial["chrf"] == ""
    assert float(partial["refusal_rate"]) == refusal_rate(Cell("lora", 1e-5, SEED), 1.0, JUDGES[0])


def test_metrics_json_holds_base_and_final_checkpoints(report):
    out, _ = report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[BASE_CELL] == {"refusal_rate": BASE_REFUSAL, "chrf": BASE_CHRF}
    lora = Cell("lora", 1e-4, SEED)
    assert metrics["lora-0.0001-1234"] == {
        "refusal_rate": refusal_rate(lora, 1.0, JUDGES[0]),
        "chrf": chrf_value(lora, 1.0),
    }
    assert metrics["lora-1e-05-1234"] == {
        "refusal_rate": refusal_rate(Cell("lora", 1e-5, SEED), 1.0, JUDGES[0])
    }
    assert MISSING_CELL not in metrics
    assert set(metrics) == {BASE_CELL, "lora-0.0001-1234", "lora-1e-05-1234", "dpo-0.0001-1234"}


def test_dvc_plot_data_is_long_format_with_base_at_zero(report):
    out, result = report
    refusal = read_csv(out / "plots" / "refusal.csv")
    assert list(refusal[0]) == [
        "method", "learning_rate", "seed", "cell", "checkpoint", "percent", "step",
        "refusal_rate", "ci_low", "ci_high",
    ]  # fmt: skip
    curves = {(r["method"], r["learning_rate"]) for r in refusal}
    assert curves == {("lora", "0.0001"), ("lora", "1e-05"), ("dpo", "0.0001")}
    lora = [r for r in refusal if r["cell"] == "lora-0.0001-1234"]
    assert [r["percent"] for r in lora] == ["0.0", "25.0", "50.0", "75.0", "100.0"]
    assert [r["checkpoint"] for r in lora] == [
        "ckpt-000",
        "ckpt-025",
        "ckpt-050",
        "ckpt-075",
        "ckpt-100",
    ]
    assert float(lora[0]["refusal_rate"]) == BASE_REFUSAL and lora[0]["step"] == "0"
    assert lora[-1]["step"] == "591"
    assert all(r["refusal_rate"] != "" for r in refusal)

    chrf = read_csv(out / "plots" / "chrf.csv")
    assert [r["checkpoint"] for r in chrf if r["cell"] == "lora-1e-05-1234"] == [
        "ckpt-000",
        "ckpt-025",
        "ckpt-050",
    ]
    template = json.loads(result.paths["plots_template"].read_text())
    assert template == dvc_plot_template()
    assert template["data"] == {"values": "<DVC_METRIC_DATA>"}
    assert template["facet"]["column"]["field"] == "method"
    line = template["spec"]["layer"][1]["encoding"]
    assert line["color"]["field"] == "learning_rate"
    assert line["y"]["field"] == "<DVC_METRIC_Y>"


def test_dvc_fills_the_plot_template_with_our_data(report):
    """DVC's own renderer accepts the template with the dvc.yaml settings given in the docs."""
    from dvc_render import VegaRenderer

    _, result = report
    for key, y in (("plots_refusal", "refusal_rate"), ("plots_chrf", "chrf")):
        rows = read_csv(result.paths[key])
        datapoints = [{**r, "rev": "workspace", "filename": key, "field": y} for r in rows]
        renderer = VegaRenderer(
            datapoints, key, template=str(result.paths["plots_template"]), x="percent", y=y
        )
        spec = renderer.get_filled_template()
        assert spec["data"]["values"] == datapoints
        line = spec["spec"]["layer"][1]["encoding"]
        assert line["x"]["field"] == "percent" and line["y"]["field"] == y
        assert "<DVC_METRIC" not in json.dumps(spec)


def test_report_markdown(report):
    out, result = report
    text = (out / "report.md").read_text()
    assert text.startswith("# ")
    assert "tests/fixtures/tiny-chat-model" in text
    assert "83 train" in text and "17 test" in text
    assert "| effective_batch_size | 8 |" in text
    assert "`grid.seeds`=[1234]" in text
    assert "![Figure 1: harm/performance trade-off](figures/fig1_harmful_answers.png)" in text
    assert (
        "![Figure 1b: refusal-rate drop/performance trade-off](figures/fig1_tradeoff.png)" in text
    )
    assert "![Figure 3: response classes](figures/fig3_response_classes.png)" in text
    assert "![Figure 2: learning-rate curves](figures/fig2_lr_curves.png)" in text
    missing = text.split("## Missing cells", 1)[1].split("\n## ", 1)[0]
    assert (
        f"- `{MISSING_CELL}`: refusal rate: no metrics file yet; chrF: no metrics file yet"
        in missing
    )
    assert "- `lora-1e-05-1234`: chrF: ckpt-075, ckpt-100" in missing
    assert "`lora-0.0001-1234`" not in missing
    assert result.missing_cells == ["lora-1e-05-1234", MISSING_CELL]
    table_row = f"| {MISSING_CELL} | ckpt-100 | missing | missing | missing | missing | missing |"
    assert table_row in text
    assert "| base | ckpt-000 | 0 | 0.979 [0.959, 0.994] |" in text
    assert "## Differences from the paper" not in text
    provenance = text.split("## Provenance", 1)[1]
    assert "0123456789abcdef0123456789abcdef01234567" in provenance
    assert "| report | deps | metrics/refusal | aaa.dir |" in provenance
    assert "| bitsandbytes | not installed |" in provenance


def test_paper_differences_only_for_the_papers_model(tmp_path: Path, metrics_dir: Path):
    write_report(
        make_params(source=paper_model()), metrics_dir, tmp_path / "r", data_stats=None,
        provenance={},
    )  # fmt: skip
    text = (tmp_path / "r" / "report.md").read_text()
    section = text.split("## Differences from the paper", 1)[1].split("\n## ", 1)[0]
    ours = refusal_rate(Cell("lora", 1e-4, SEED), 0.5, JUDGES[0])
    assert f"| lora-0.0001 | ckpt-050 | refusal rate | 0.848 | {ours:.3f} [" in section
    assert f"| {ours - 0.848:+.3f} |" in section
    assert "| base | ckpt-000 | chrF | 20.0 | 20.0 [18.5, 21.5] | +0.0 |" in section
    # qlora is not in this grid: compared as missing, not as zero.
    assert "| qlora-0.0001 | ckpt-100 | refusal rate | 0.938 | missing | missing |" in section
    assert "| lora-1e-05 | ckpt-100 | chrF | 71.6 | missing | missing |" in section


def test_report_without_any_metrics_yet(tmp_path: Path):
    result = write_report(
        make_params(), tmp_path / "metrics", tmp_path / "out", data_stats=None, provenance={}
    )
    assert result.missing_cells == [
        BASE_CELL,
        *(c.name for c in grid_cells(METHODS, RATES, [SEED])),
    ]
    assert json.loads(result.paths["metrics_json"].read_text()) == {}
    rows = read_csv(result.paths["results_csv"])
    assert len(rows) == 1 + 4 * len(FRACTIONS)
    assert all(r["refusal_rate"] == "" and r["chrf"] == "" for r in rows)
    assert read_csv(result.paths["plots_refusal"]) == []
    assert imread(result.paths["fig2"]).size > 0
    # No evaluation set listed: AdvBench's table (missing) and an empty Figure 4.
    text = result.paths["report"].read_text()
    assert "### `advbench` (harmful)" in text and "No benign set in `evaluations.run`" in text
    assert imread(result.paths["fig4"]).size > 0


def test_secret_values_never_reach_the_report(tmp_path: Path, metrics_dir: Path, monkeypatch):
    secret = "hf_" + "abcdefghij" * 3  # built here so the repo holds nothing token-shaped
    monkeypatch.setenv("HF_TOKEN", secret)
    params = make_params()
    params["study"]["name"] = secret  # pasted into params by mistake
    write_report(
        params, metrics_dir, tmp_path / "r", data_stats=None,
        provenance=collect_provenance(tmp_path, params),
    )  # fmt: skip
    text = (tmp_path / "r" / "report.md").read_text()
    assert secret not in text and "[redacted]" in text
    assert redact_secrets("max_new_tokens: 16", {"MAX_TOKENS": "16"}) == "max_new_tokens: 16"


# --------------------------------------------------------------------------------------------
# Provenance

# Hashes unquoted, even one of digits alone, which YAML would read as a number.
DVC_LOCK = """\
schema: '2.0'
stages:
  prepare_mtpref:
    cmd: python stages/prepare_mtpref.py
    deps:
    - path: src/safetydrift/data.py
      hash: md5
      md5: 0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e
      size: 1234
    params:
      params.yaml:
        data.mtpref.seed: 42
    outs:
    - path: data/mtpref/train.jsonl
      hash: md5
      md5: 11111111111111111111111111111111
      size: 99
  train@lora-5e-05:
    cmd: python stages/train.py --method lora --lr 5e-05
    deps:
    - path: data/mtpref/train.jsonl
      hash: md5
      md5: 11111111111111111111111111111111
    outs:
    - path: models/lora-5e-05
      hash: md5
      md5: 22222222222222222222222222222222.dir
      nfiles: 5
"""


def test_provenance_reads_dvc_lock_and_holds_no_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    monkeypatch.setenv("SAFETYDRIFT_PROBE", "probe-value-7f3a")
    (tmp_path / "dvc.lock").write_text(DVC_LOCK, encoding="utf-8")
    params = make_params()
    params["study"]["seed"] = 7
    provenance = collect_provenance(tmp_path, params)

    assert provenance["dvc_lock"] == {
        "prepare_mtpref": {
            "deps": {"src/safetydrift/data.py": "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"},
            "outs": {"data/mtpref/train.jsonl": "11111111111111111111111111111111"},
        },
        "train@lora-5e-05": {
            "deps": {"data/mtpref/train.jsonl": "11111111111111111111111111111111"},
            "outs": {"models/lora-5e-05": "22222222222222222222222222222222.dir"},
        },
    }
    assert provenance["git"] == {"revision": None, "dirty": None}  # tmp_path is no repository
    assert provenance["seeds"] == {
        "grid.seeds": [SEED],
        "data.mtpref.seed": 42,
        "study.seed": 7,
        "model.seed": 0,
    }
    assert set(provenance["packages"]) >= {"torch", "transformers", "dvc", "bitsandbytes"}
    assert provenance["packages"]["dvc"]  # installed in this environment
    assert provenance["params"] == params and provenance["params"] is not params
    assert provenance["hardware"]["cpu_count"] >= 1
    dumped = json.dumps(provenance)
    assert "hf_secretsecretsecret" not in dumped and "probe-value-7f3a" not in dumped
    assert "HF_TOKEN" not in dumped and "SAFETYDRIFT_PROBE" not in dumped


def test_provenance_tolerates_no_dvc_lock_and_reads_git(tmp_path: Path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    assert collect_provenance(tmp_path, {})["git"] == {"revision": None, "dirty": None}
    (tmp_path / "file.txt").write_text("one\n")
    git("add", "file.txt")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "one")
    provenance = collect_provenance(tmp_path, {})
    assert provenance["dvc_lock"] is None
    assert len(provenance["git"]["revision"]) == 40 and provenance["git"]["dirty"] is False
    (tmp_path / "file.txt").write_text("two\n")
    assert collect_provenance(tmp_path, {})["git"]["dirty"] is True


# --------------------------------------------------------------------------------------------
# Evaluation sets beyond AdvBench


def set_metrics(kind: str, answer: int, n: int = 10) -> dict:
    """One checkpoint of an evaluation set: `answer` answers of `n`, the rest echoes; a harmful
    set's judge calls half the answers harmful."""
    counts = {"degenerate": 0, "refusal": 0, "echo": n - answer, "answer": answer}
    entry = {
        "fraction": 1.0,
        "step": 591,
        "n": n,
        "classes": {c: {"count": k, "share": k / n} for c, k in counts.items()},
        "collapsed": False,
    }
    if kind == "benign":
        entry["rates"] = {
            name: {"count": counts[c], "n": n, "rate": counts[c] / n, "ci_low": 0.0, "ci_high": 1.0}
            for name, c in (
                ("over_refusal", "refusal"),
                ("echo", "echo"),
                ("answer", "answer"),
                ("degenerate", "degenerate"),
            )
        }
    else:
        harmful = answer // 2
        entry["harm"] = {
            "guard": {
                "harmful_answer": {
                    "harmful_answers": harmful,
                    "unknown": 0,
                    "n": n,
                    "harmful_answer_rate": harmful / n,
                    "ci_low": 0.0,
                    "ci_high": 1.0,
                }
            }
        }
    return {"kind": kind, "checkpoints": {"ckpt-100": entry}}


def unit_metrics(unit: str, **members: dict) -> dict:
    """A unit's metrics file as `judge_evaluation` writes it: each member set's results."""
    return {"evaluation": unit, "sets": {name.replace("_", "-"): m for name, m in members.items()}}


def test_a_table_per_evaluation_set_and_the_harm_helpfulness_figure(tmp_path, metrics_dir):
    params = make_params()
    params["harm"] = {"judges": [{"name": "guard", "judge": "guard", "model": "m"}]}
    # A set alone, a group's members (shown exactly as sets alone), a set without metrics yet.
    params["evaluations"] = {
        "run": ["hb", "controls", "not-run-yet"],
        "sets": {
            "hb": {"kind": "harmful", "source": "hb.csv", "prompt_column": "Behavior"},
            "controls": {
                "group": {
                    "kind-words": {"kind": "benign", "source": "b.jsonl", "prompt_column": "input"},
                    "hb-context": {
                        "kind": "harmful",
                        "source": "c.csv",
                        "prompt_column": "Behavior",
                    },
                }
            },
            "not-run-yet": {"kind": "benign", "source": "c.jsonl", "prompt_column": "input"},
        },
    }
    evaluations = metrics_dir / "evaluations"
    dump(
        evaluations / "hb" / "lora-0.0001-1234.json",
        unit_metrics("hb", hb=set_metrics("harmful", answer=8)),
    )
    dump(
        evaluations / "controls" / "lora-0.0001-1234.json",
        unit_metrics(
            "controls",
            kind_words=set_metrics("benign", answer=3),
            hb_context=set_metrics("harmful", answer=4),
        ),
    )
    result = write_report(params, metrics_dir, tmp_path / "out", data_stats=None, provenance={})
    text = result.paths["report"].read_text()
    section = text[text.index("\n## Evaluation sets\n") :]
    headings = [
        "### `advbench` (harmful)",
        "### `hb` (harmful)",
        "### `kind-words` (benign)",
        "### `hb-context` (harmful)",
        "### `not-run-yet` (benign)",
    ]
    assert [section.index(h) for h in headings] == sorted(section.index(h) for h in headings)
    assert "`controls`" not in section  # a group names no table: its sets do
    assert (
        "Figure 4: harmful-answer rate on the harmful sets (`advbench`, `hb`, `hb-context`;"
        in section
    )
    hb = section[section.index("### `hb`") : section.index("### `kind-words`")]
    assert "| lora-0.0001-1234 | 10 | 0.400 [0.000, 1.000] | 0.000 | 0.000 | 0.200 | 0.800 |" in hb
    assert "| base | missing |" in hb and "| dpo-1e-05-1234 | missing |" in hb
    benign = section[section.index("### `kind-words`") : section.index("### `hb-context`")]
    assert "| cell | n | over-refusal | echo | answer | degenerate |" in benign
    assert "| lora-0.0001-1234 | 10 | 0.000 [0.000, 1.000] | 0.700 [0.000, 1.000] | 0.300" in benign
    member = section[section.index("### `hb-context`") : section.index("### `not-run-yet`")]
    assert (
        "| lora-0.0001-1234 | 10 | 0.200 [0.000, 1.000] | 0.000 | 0.000 | 0.600 | 0.400 |" in member
    )
    figure = imread(result.paths["fig4"])
    assert figure.size > 0 and np.std(figure) > 0


def test_the_figure_pools_every_set_and_skips_a_checkpoint_a_set_lacks():
    def point(kind, answer, n=10):
        return _from_metrics(set_metrics(kind, answer, n)["checkpoints"]["ckpt-100"])

    results = SetResults(
        kinds={"advbench": "harmful", "hb": "harmful", "b1": "benign", "b2": "benign"},
        harm_judge="guard",
        points={
            "advbench": {"lora-0.0001": {"ckpt-100": point("harmful", 8)}},
            "hb": {"lora-0.0001": {"ckpt-100": point("harmful", 4, n=30)}},
            "b1": {"lora-0.0001": {"ckpt-100": point("benign", 3)}},
            "b2": {"lora-0.0001": {"ckpt-100": point("benign", 9, n=30)}},
        },
    )
    cells = [Cell("lora", 1e-4), Cell("dpo", 1e-4)]
    (only,) = helpfulness_points(results, cells, 1e-4, [0.5, 1.0])
    assert (only.cell, only.percent) == ("lora-0.0001", 100)
    assert only.harmful["rate"] == pytest.approx((4 + 2) / 40)  # harmful answers pooled
    assert only.answer["rate"] == pytest.approx((3 + 9) / 40)  # benign answers pooled
    assert only.answer["ci_low"] < only.answer["rate"] < only.answer["ci_high"]
    del results.points["b2"]["lora-0.0001"]
    assert helpfulness_points(results, cells, 1e-4, [1.0]) == []
