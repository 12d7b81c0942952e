"""The report's seed axis: mean and spread over `grid.seeds`, each seed in the figures, and the
committed reports from before the seed axis still read."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from conftest import ROOT
from matplotlib.figure import Figure

from safetydrift.cells import BASE_CELL, Cell, checkpoint_label
from safetydrift.compare.pairing import Settings
from safetydrift.paper import paper_model
from safetydrift.params import load_params
from safetydrift.report import evaluation_sets as sets_report
from safetydrift.report import responses as responses_report
from safetydrift.report.figures import lr_curves_figure, tradeoff_figure
from safetydrift.report.paired import BETWEEN_METHODS, PromptOutcomes, paired_tests
from safetydrift.report.results import collect_results
from safetydrift.report.write import write_report
from safetydrift.stats.comparison import REFUSAL

JUDGE = "keywords-kempermann2025"
HARM_JUDGE = "guard"
SEEDS = [42, 43, 44]
METHODS = ["lora", "dpo"]
RATE = 1e-4
FRACTIONS = (0.5, 1.0)
BASE_REFUSAL, BASE_CHRF = 0.9, 20.0
# Final keyword refusal rates per seed: dpo's seeds far apart, as issue 20's two DPO runs were.
FINAL_REFUSAL = {"lora": {42: 0.80, 43: 0.78, 44: 0.82}, "dpo": {42: 0.215, 43: 0.021, 44: 0.1}}
FINAL_HARMFUL = {"lora": {42: 0.01, 43: 0.02, 44: 0.03}, "dpo": {42: 0.2, 43: 0.4, 44: 0.3}}
CHRF = {"lora": {42: 70.0, 43: 71.0, 44: 72.0}, "dpo": {42: 40.0, 43: 50.0}}  # dpo-…-44: none yet
SHARES = {"lora": (0.1, 0.7, 0.1, 0.1), "dpo": (0.5, 0.2, 0.1, 0.2)}  # degenerate … answer


def shares(method: str, seed: int) -> tuple[float, ...]:
    """The method's class shares, 5 points more degenerate (and fewer refusals) per seed."""
    degenerate, refusal, echo, answer = SHARES[method]
    shift = 0.05 * (seed - 43)
    return (round(degenerate + shift, 6), round(refusal - shift, 6), echo, answer)


def at(method: str, seed: int, fraction: float, final: dict) -> float:
    """Half way between the base model and the final value at 50%."""
    start = BASE_REFUSAL if final is FINAL_REFUSAL else 0.0
    return round(start + (final[method][seed] - start) * fraction, 6)


def refusal_entry(fraction: float, rate: float, shares: tuple[float, ...]) -> dict:
    classes = dict(zip(("degenerate", "refusal", "echo", "answer"), shares, strict=True))
    return {
        "fraction": fraction,
        "step": round(fraction * 100),
        "judges": {
            JUDGE: {
                "refusal_rate": rate,
                "ci_low": rate - 0.02,
                "ci_high": rate + 0.02,
                "refusals": round(1000 * rate),
                "n": 1000,
            }
        },
        "classes": {name: {"count": round(100 * s), "share": s} for name, s in classes.items()},
        "collapsed": shares[0] >= 0.5,
    }


def harm_entry(rate: float) -> dict:
    harmful = round(100 * rate)
    return {
        "judges": {
            HARM_JUDGE: {
                "harmful_answer": {
                    "harmful_answers": harmful,
                    "unknown": 0,
                    "n": 100,
                    "harmful_answer_rate": rate,
                    "ci_low": max(rate - 0.05, 0.0),
                    "ci_high": rate + 0.05,
                }
            }
        }
    }


def dump(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def make_metrics(metrics_dir: Path, seeds=SEEDS) -> None:
    base_shares = (0.0, 0.9, 0.0, 0.1)
    dump(
        metrics_dir / "refusal" / "base.json",
        {
            "cell": BASE_CELL,
            "checkpoints": {"ckpt-000": refusal_entry(0.0, BASE_REFUSAL, base_shares)},
        },
    )
    dump(
        metrics_dir / "harm" / "base.json",
        {"cell": BASE_CELL, "checkpoints": {"ckpt-000": harm_entry(0.0)}},
    )
    dump(
        metrics_dir / "chrf" / "base.json",
        {"cell": BASE_CELL, "checkpoints": {"ckpt-000": {"fraction": 0.0, "chrf": BASE_CHRF}}},
    )
    for method in METHODS:
        for seed in seeds:
            cell = Cell(method, RATE, seed).name
            labels = {checkpoint_label(f): f for f in FRACTIONS}
            dump(
                metrics_dir / "refusal" / f"{cell}.json",
                {
                    "cell": cell,
                    "checkpoints": {
                        label: refusal_entry(
                            f, at(method, seed, f, FINAL_REFUSAL), shares(method, seed)
                        )
                        for label, f in labels.items()
                    },
                },
            )
            dump(
                metrics_dir / "harm" / f"{cell}.json",
                {
                    "cell": cell,
                    "checkpoints": {
                        label: harm_entry(at(method, seed, f, FINAL_HARMFUL))
                        for label, f in labels.items()
                    },
                },
            )
            if seed in CHRF[method]:
                dump(
                    metrics_dir / "chrf" / f"{cell}.json",
                    {
                        "cell": cell,
                        "checkpoints": {
                            label: {
                                "fraction": f,
                                "chrf": CHRF[method][seed],
                                "ci_low": 0.0,
                                "ci_high": 99.0,
                            }
                            for label, f in labels.items()
                        },
                    },
                )


def make_params(seeds=SEEDS, source: str = "tests/fixtures/tiny-chat-model") -> dict:
    return {
        "study": {"name": "seeds"},
        "model": {"source": source, "revision": None},
        "train": {"checkpoint_fractions": list(FRACTIONS)},
        "grid": {"methods": METHODS, "learning_rates": [RATE], "seeds": seeds},
        "refusal": {"judges": [JUDGE]},
        "harm": {"judges": [{"name": HARM_JUDGE, "judge": "guard", "model": "m"}]},
        "report": {"fixed_lr": RATE, "primary_judge": JUDGE, "agreement_resamples": 20},
    }


@pytest.fixture
def three_seeds(tmp_path: Path):
    make_metrics(tmp_path / "metrics")
    result = write_report(
        make_params(), tmp_path / "metrics", tmp_path / "reports", data_stats=None, provenance={}
    )
    return tmp_path, result


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_seeds_csv_holds_mean_spread_and_every_seed(three_seeds):
    _, result = three_seeds
    rows = {
        (r["method"], r["checkpoint"], r["metric"]): r for r in read_csv(result.paths["seeds_csv"])
    }
    dpo = rows[("dpo", "ckpt-100", "refusal_rate")]
    values = [0.215, 0.021, 0.1]
    assert (dpo["judge"], dpo["seeds"], dpo["of_seeds"]) == (JUDGE, "3", "3")
    assert float(dpo["mean"]) == pytest.approx(statistics.fmean(values))
    assert float(dpo["sd"]) == pytest.approx(statistics.stdev(values))
    assert (float(dpo["min"]), float(dpo["max"])) == (0.021, 0.215)
    assert dpo["values"] == "42=0.215;43=0.021;44=0.1"
    harmful = rows[("lora", "ckpt-100", "harmful_answer_rate")]
    assert harmful["judge"] == HARM_JUDGE and float(harmful["mean"]) == pytest.approx(0.02)
    # dpo's third seed has no chrF yet: the mean of the two that have it, never a zero.
    chrf = rows[("dpo", "ckpt-100", "chrf")]
    assert (chrf["seeds"], chrf["of_seeds"], float(chrf["mean"])) == ("2", "3", 45.0)
    assert {key[1] for key in rows} == {"ckpt-050", "ckpt-100"}


def test_the_report_states_mean_and_spread_per_checkpoint(three_seeds):
    _, result = three_seeds
    text = result.paths["report"].read_text(encoding="utf-8")
    section = text.split("\n## Seeds\n", 1)[1].split("\n## ", 1)[0]
    assert "trained with 3 seeds (42, 43, 44; `grid.seeds`)" in section
    header = (
        f"| method | learning rate | checkpoint | seeds | refusal rate ({JUDGE}) | "
        f"harmful-answer rate ({HARM_JUDGE}) | chrF |"
    )
    assert header in section
    sd = statistics.stdev([0.215, 0.021, 0.1])
    assert (
        f"| dpo | 0.0001 | ckpt-100 | 3 | 0.112 (sd {sd:.3f}; 0.021–0.215) | "
        "0.300 (sd 0.100; 0.200–0.400) | 45.0 (sd 7.1; 40.0–50.0; 2 of 3 seeds) |"
    ) in section
    # Every seed is a cell of its own in the other tables.
    assert "| dpo-0.0001-43 | ckpt-100 |" in text
    assert "`grid.seeds`=[42, 43, 44]" in text


def test_figures_draw_each_seed_and_the_mean(three_seeds):
    root, _ = three_seeds
    results = collect_results(make_params(), root / "metrics")
    # Figure 1b: each seed's point small, the mean full size, labelled once per method.
    ax = tradeoff_figure(results, RATE).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["lora (mean of 3 seeds)", "dpo (mean of 2 seeds)"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    mean = lines["lora (mean of 3 seeds)"]
    drops = [100 * (BASE_REFUSAL - FINAL_REFUSAL["lora"][s]) for s in SEEDS]
    assert mean.get_ydata()[0] == pytest.approx(statistics.fmean(drops))
    seeds = [
        x for x in ax.get_lines() if x.get_label().startswith("_") and x.get_marker() != "None"
    ]
    assert sorted(len(line.get_xdata()) for line in seeds) == [2, 3]  # dpo-…-44 lacks chrF
    # The seed without chrF is named on the figure, not drawn at zero.
    assert sorted(t.get_text() for t in ax.texts) == ["dpo", "lora", "missing: dpo-0.0001-44"]

    # Figure 2: per learning rate, a line through the means and each seed's points beside it.
    refusal_dpo = lr_curves_figure(results).axes[1]
    (line,) = [x for x in refusal_dpo.get_lines() if x.get_label() == "lr=0.0001"]
    assert list(line.get_xdata()) == [0, 50, 100]
    assert line.get_ydata()[-1] == pytest.approx(statistics.fmean(FINAL_REFUSAL["dpo"].values()))
    assert line.get_ydata()[0] == BASE_REFUSAL
    assert len([x for x in refusal_dpo.get_lines() if x.get_label().startswith("_")]) == 3

    # Figure 1 (harm): the same, from the harm judge's rates.
    responses = responses_report.collect_responses(make_params(), results.cells, FRACTIONS, root)
    chrf = {(r.cell, r.checkpoint): r.chrf.value for r in results.all_rows() if r.chrf}
    points = responses_report.harm_tradeoff_points(
        responses, results.cells, chrf, RATE, results.final_checkpoint
    )
    assert len(points) == 1 + 3 + 2  # the base model, lora's seeds, dpo's seeds with chrF
    figure = responses_report.harm_tradeoff_figure(
        points, RATE, HARM_JUDGE, lambda w, h: Figure(),
        lambda method, methods: ("o", "red"),
    )  # fmt: skip
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert sorted(labels) == ["base", "dpo (mean of 2 seeds)", "lora (mean of 3 seeds)"]

    # Figure 3: the mean share over seeds in each bar, the seeds counted in the title.
    figure = responses_report.class_shares_figure(responses, results.cells, lambda w, h: Figure())
    lora = figure.axes[0]
    assert lora.get_title() == "lora, lr=0.0001, mean of 3 seeds"
    heights = [bar.get_height() for bar in lora.patches]
    assert heights[:3] == pytest.approx([0.0, 0.1, 0.1])  # degenerate: the base model, the mean
    dpo = figure.axes[1]
    # dpo's seeds 43 and 44 are at least half degenerate (collapsed), seed 42 is not.
    assert [t.get_text() for t in dpo.texts] == ["collapsed 2/3", "collapsed 2/3"]


def test_figure_4_draws_each_seed_and_a_line_through_the_means(three_seeds):
    root, _ = three_seeds
    params = make_params()
    params["evaluations"] = {
        "run": ["kind-words"],
        "sets": {"kind-words": {"kind": "benign", "source": "b.jsonl", "prompt_column": "input"}},
    }
    answered = {42: 0.5, 43: 0.6, 44: 0.7}  # benign answer rate at every checkpoint
    for cell in collect_results(params, root / "metrics").cells:
        rate = answered[cell.seed]
        entry = {"n": 10, "classes": {}, "rates": {"answer": {"count": round(10 * rate), "n": 10}}}
        dump(
            root / "metrics" / "evaluations" / "kind-words" / f"{cell.name}.json",
            {
                "evaluation": "kind-words",
                "sets": {
                    "kind-words": {
                        "checkpoints": {
                            checkpoint_label(f): {**entry, "fraction": f} for f in FRACTIONS
                        }
                    }
                },
            },
        )
    results = collect_results(params, root / "metrics")
    responses = responses_report.collect_responses(params, results.cells, FRACTIONS, root)
    sets = sets_report.collect_sets(params, results.cells, responses, root)
    points = sets_report.helpfulness_points(sets, results.cells, RATE, FRACTIONS)
    assert len(points) == 2 * 3 * 2  # two methods × three seeds × two checkpoints, no base
    figure = sets_report.helpfulness_figure(
        points, RATE, HARM_JUDGE, lambda w, h: Figure(), lambda method, methods: ("o", "red")
    )
    ax = figure.axes[0]
    assert ax.get_legend_handles_labels()[1] == ["lora (mean of 3 seeds)", "dpo (mean of 3 seeds)"]
    (line,) = [x for x in ax.get_lines() if x.get_label() == "lora (mean of 3 seeds)"]
    assert list(line.get_xdata()) == pytest.approx([0.6, 0.6])  # the mean benign answer rate
    harmful = [statistics.fmean(at("lora", s, f, FINAL_HARMFUL) for s in SEEDS) for f in FRACTIONS]
    assert list(line.get_ydata()) == pytest.approx(harmful)


def test_dvc_plot_rows_keep_each_seed(three_seeds):
    _, result = three_seeds
    results = read_csv(result.paths["results_csv"])
    assert [(r["cell"], r["seed"]) for r in results[:2]] == [("base", ""), ("lora-0.0001-42", "42")]
    rows = read_csv(result.paths["plots_refusal"])
    dpo = [r for r in rows if r["method"] == "dpo" and r["checkpoint"] == "ckpt-100"]
    assert [(r["seed"], r["cell"]) for r in dpo] == [
        ("42", "dpo-0.0001-42"),
        ("43", "dpo-0.0001-43"),
        ("44", "dpo-0.0001-44"),
    ]


def test_the_papers_figures_compare_with_the_mean_over_seeds(tmp_path: Path):
    make_metrics(tmp_path / "metrics")
    params = make_params(source=paper_model())
    params["grid"]["methods"] = ["lora"]
    write_report(params, tmp_path / "metrics", tmp_path / "r", data_stats=None, provenance={})
    text = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    section = text.split("## Differences from the paper", 1)[1].split("\n## ", 1)[0]
    mean = statistics.fmean(FINAL_REFUSAL["lora"].values())
    assert (
        f"| lora-0.0001 | ckpt-100 | refusal rate | 0.823 | {mean:.3f} | {mean - 0.823:+.3f} |"
        in section
    )


def test_one_seed_has_no_spread_to_state(tmp_path: Path):
    make_metrics(tmp_path / "metrics", seeds=[42])
    result = write_report(
        make_params(seeds=[42]),
        tmp_path / "metrics",
        tmp_path / "r",
        data_stats=None,
        provenance={},
    )
    text = result.paths["report"].read_text(encoding="utf-8")
    section = text.split("\n## Seeds\n", 1)[1].split("\n## ", 1)[0]
    assert "trained with seed 42 (`grid.seeds`)" in section and "|" not in section
    assert "`grid.seeds: [42, 43, 44]` trains each three times" in section
    # One seed: the figures keep each cell's own interval.
    results = collect_results(make_params(seeds=[42]), tmp_path / "metrics")
    ax = tradeoff_figure(results, RATE).axes[0]
    assert sorted(c.get_label() for c in ax.containers) == ["dpo", "lora"]
    rows = read_csv(result.paths["seeds_csv"])
    final = next(
        r
        for r in rows
        if (r["method"], r["checkpoint"], r["metric"]) == ("dpo", "ckpt-100", "refusal_rate")
    )
    assert (final["seeds"], final["mean"], final["sd"], final["values"]) == (
        "1",
        "0.215",
        "",
        "42=0.215",
    )


def test_methods_are_paired_only_within_a_seed():
    cells = [Cell(m, RATE, s) for m in ("full", "lora") for s in (1, 2)]
    outcomes = PromptOutcomes()
    for cell in cells:
        # Seed 2 of each method refuses more: a pairing across seeds would not find equal rates.
        refused = 10 if cell.seed == 1 else 16
        outcomes.refusal[(cell.name, "ckpt-100")] = {i: i < refused for i in range(20)}
    outcomes.refusal[(BASE_CELL, "ckpt-000")] = {i: True for i in range(20)}
    tests = paired_tests(outcomes, cells, [1.0], Settings(n_resamples=10), JUDGE, None)
    between = [t for t in tests.tests if t.kind == BETWEEN_METHODS]
    assert [(t.cell_a, t.cell_b) for t in between] == [
        ("full-0.0001-1", "lora-0.0001-1"),
        ("full-0.0001-2", "lora-0.0001-2"),
    ]
    assert all(t.comparison.difference == 0.0 for t in between)
    assert tests.family_size(REFUSAL) == 4 + 2


def test_committed_reports_from_before_the_seed_axis_still_read(tmp_path: Path):
    # reports/standin-grid: its params.yaml has `train.seed`, no `grid.seeds`, and its metrics
    # name their cells METHOD-LR.
    committed = ROOT / "reports" / "standin-grid"
    params = load_params(committed / "params.yaml")
    assert "seeds" not in params["grid"] and params["train"]["seed"] == 42
    results = collect_results(params, committed / "metrics")
    assert Cell("lora", 1e-5) in results.cells
    stored = json.loads((committed / "metrics" / "refusal" / "lora-1e-05.json").read_text())
    final = results.row("lora-1e-05", "ckpt-100")
    assert final is not None and final.chrf is not None
    judge = results.primary_judge
    assert final.refusal[judge].value == pytest.approx(
        stored["checkpoints"]["ckpt-100"]["judges"][judge]["refusal_rate"]
    )
    result = write_report(
        params, committed / "metrics", tmp_path / "r", data_stats=None, provenance={}
    )
    text = result.paths["report"].read_text(encoding="utf-8")
    assert "| lora-1e-05 | ckpt-100 |" in text
    section = text.split("\n## Seeds\n", 1)[1].split("\n## ", 1)[0]
    assert "trained once (`train.seed`)" in section
    assert "`train.seed`=42" in text
