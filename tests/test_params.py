import subprocess
import sys

import pytest
from conftest import ROOT

from safetydrift.data.sources import DataError
from safetydrift.params import (
    ParamError,
    apply_preset,
    available_presets,
    choice,
    get,
    load_params,
)
from safetydrift.training.settings import keep_checkpoints_setting


def test_presets_are_complete():
    # Whatever preset the working tree's params.yaml holds (the README's main command switches
    # it to `smoke`), every preset names the same keys as the paper's.
    assert {"paper", "standin", "smoke"} <= set(available_presets(ROOT))

    # Judge models and evaluation sets are named by each preset (mappings of names): only the
    # mapping is compared.
    free_form = {"harm.models", "evaluations.sets"}

    def keys(tree, prefix=""):
        nested = {
            k
            for key, value in tree.items()
            if isinstance(value, dict) and f"{prefix}{key}" not in free_form
            for k in keys(value, f"{prefix}{key}.")
        }
        return {f"{prefix}{key}" for key in tree} | nested

    paper = keys(load_params(ROOT / "presets" / "paper.yaml"))
    for name in ("standin", "smoke"):
        assert keys(load_params(ROOT / "presets" / f"{name}.yaml")) - {"model.seed"} == paper


def test_the_committed_params_yaml_is_a_preset_that_the_preset_command_may_replace():
    # `safetydrift preset NAME` refuses to overwrite a params.yaml that matches no preset: one that
    # drifted from its preset (a comment edited in one and not the other) stops every user's first
    # `safetydrift preset standin` (it stopped the H200 run of 2026-12-03).
    held = (ROOT / "params.yaml").read_text()
    assert any(
        held == (ROOT / "presets" / f"{name}.yaml").read_text() for name in available_presets(ROOT)
    )


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


def test_a_choice_is_one_of_its_values_or_a_named_error():
    assert keep_checkpoints_setting("final") == "final"
    message = r"^params.yaml: `train.keep_checkpoints` must be one of all, final, got 2$"
    with pytest.raises(ParamError, match=message):
        keep_checkpoints_setting(2)
    # A module's own error type stays what its callers catch.
    with pytest.raises(DataError, match="`train_data.kind` must be one of mtpref, chat, got None"):
        choice(None, ("mtpref", "chat"), "train_data.kind", DataError)
