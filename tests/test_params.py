import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from safetydrift.params import ParamError, apply_preset, available_presets, get, load_params
from safetydrift.pipeline import STAGE_PARAMS


def test_presets_are_complete_and_params_yaml_is_the_paper():
    assert {"paper", "standin", "smoke"} <= set(available_presets(ROOT))
    assert load_params(ROOT / "params.yaml") == load_params(ROOT / "presets" / "paper.yaml")

    def keys(tree, prefix=""):
        nested = {
            k
            for key, value in tree.items()
            if isinstance(value, dict)
            for k in keys(value, f"{prefix}{key}.")
        }
        return {f"{prefix}{key}" for key in tree} | nested

    paper = keys(load_params(ROOT / "presets" / "paper.yaml"))
    for name in ("standin", "smoke"):
        assert keys(load_params(ROOT / "presets" / f"{name}.yaml")) - {"model.seed"} == paper


def test_the_preset_command_switches_params_yaml(tmp_path):
    (tmp_path / "presets").mkdir()
    for name in ("paper", "smoke"):
        (tmp_path / "presets" / f"{name}.yaml").write_text(
            (ROOT / "presets" / f"{name}.yaml").read_text()
        )
    cli = [sys.executable, "-m", "safetydrift.cli", "preset"]
    done = subprocess.run([*cli, "smoke"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert get(load_params(tmp_path / "params.yaml"), "study.name") == "smoke"
    listed = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True)
    assert listed.stdout.split() == ["paper", "smoke"]
    unknown = subprocess.run([*cli, "nope"], cwd=tmp_path, capture_output=True, text=True)
    assert unknown.returncode == 1
    assert "unknown preset `nope`" in unknown.stderr and "paper, smoke" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    with pytest.raises(ParamError, match="missing key `train.seed`"):
        get({"train": {}}, "train.seed")
    apply_preset("paper", tmp_path)
    assert get(load_params(tmp_path / "params.yaml"), "study.name") == "paper"


def test_dvc_stages_declare_exactly_the_params_their_code_reads():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {
        "prepare_mtpref": stages["prepare_mtpref"]["params"],
        "prepare_advbench": stages["prepare_advbench"]["params"],
        "prepare_model": stages["prepare_model"]["params"],
        "train": [p.replace("${item.method}", "{method}") for p in stages["train"]["params"]],
        "generate_refusal": stages["generate_refusal"]["params"],
        "eval_refusal": stages["eval_refusal"]["params"],
        "generate_chrf": stages["generate_chrf"]["params"],
        "eval_chrf": stages["eval_chrf"]["params"],
        "report": stages["report"]["params"],
    }
    assert declared == STAGE_PARAMS
    for base, cells in [
        ("generate_refusal_base", "generate_refusal"),
        ("eval_refusal_base", "eval_refusal"),
        ("generate_chrf_base", "generate_chrf"),
        ("eval_chrf_base", "eval_chrf"),
    ]:
        assert stages[base]["params"] == stages[cells]["params"]
