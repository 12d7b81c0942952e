"""Fast paths that rely on library internals run only on the versions they were verified with;
on any other version the plain library path runs, with one warning line and the same result."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from safetydrift import compat
from safetydrift.generation.engines import HFEngine, StaticEngine, build_engine
from safetydrift.generation.prompts import encode_conversations
from safetydrift.generation.settings import GenerationSettings
from safetydrift.models import load_model, load_tokenizer
from safetydrift.training.model import use_cuda_graphs
from safetydrift.training.settings import train_settings

UNRELEASED = ">=999"
ROOT = Path(__file__).resolve().parents[1]
SHARED_BIN = ROOT.parent / "shared" / "bin"


@pytest.mark.parametrize("feature", sorted(compat.VERIFIED))
def test_the_locked_libraries_are_the_verified_ones(feature):
    # A lock file update that moves a library out of a fast path's range fails here, so the range
    # is widened only after that path's tests (and, for CUDA, a GPU run) pass on the new version.
    assert compat.unverified_libraries(feature) == []


def unverify(monkeypatch, feature: str) -> None:
    libraries = {name: UNRELEASED for name in compat.VERIFIED[feature]}
    monkeypatch.setitem(compat.VERIFIED, feature, libraries)
    compat._warn_once.cache_clear()


def test_unverified_static_decoding_generates_with_transformers(
    base_model_dir, monkeypatch, caplog
):
    tokenizer = load_tokenizer(base_model_dir)
    model = load_model(base_model_dir, dtype="float32").eval()
    conversations = [[{"role": "user", "content": text}] for text in ("Hallo Welt", "Guten Tag")]
    prompt_ids = encode_conversations(tokenizer, conversations)
    settings = GenerationSettings(backend="static", max_new_tokens=6, batch_size=4, dtype="float32")
    assert isinstance(build_engine(tokenizer, settings), StaticEngine)

    unverify(monkeypatch, "static-decoding")
    with caplog.at_level(logging.WARNING, logger="safetydrift.compat"):
        engines = [build_engine(tokenizer, settings) for _ in range(2)]
    assert all(isinstance(engine, HFEngine) for engine in engines)
    warnings = [r.getMessage() for r in caplog.records if r.name == "safetydrift.compat"]
    assert len(warnings) == 1, warnings  # one line per process, not one per engine
    assert "static-decoding: not verified with" in warnings[0] and "transformers 5" in warnings[0]
    assert "transformers' `generate`" in warnings[0]
    plain = HFEngine(tokenizer, GenerationSettings(backend="hf", max_new_tokens=6, batch_size=4))
    with torch.no_grad():
        assert engines[0].generate(model, prompt_ids) == plain.generate(model, prompt_ids)


def test_unverified_cuda_graphs_train_eagerly_even_when_asked(monkeypatch, caplog):
    params = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
    params["train"].update(cuda_graphs=True, pad_to_multiple_of=64)
    unverify(monkeypatch, "cudagraphs")
    with caplog.at_level(logging.WARNING, logger="safetydrift.compat"):
        # `true` on a machine without CUDA is an error, but with unverified libraries the plain
        # path is taken before that question arises.
        assert use_cuda_graphs(train_settings(params, "full", 1e-4)) is False
    assert any("cudagraphs: not verified" in r.getMessage() for r in caplog.records)


def test_unverified_gguf_reader_is_not_patched(monkeypatch, caplog, tmp_path):
    """gguf's own reader parses the file once per object transformers builds (the fast path
    parses it once); the model written is the same either way."""
    import gguf

    from safetydrift.models import ModelSpec, prepare_model

    if not (SHARED_BIN / "fetch-standin-model").exists():
        pytest.skip("../shared/bin is not beside this checkout")
    fetched = subprocess.run(
        [str(SHARED_BIN / "fetch-standin-model"), "smollm2-135m-instruct"],
        capture_output=True,
        text=True,
    )
    assert fetched.returncode == 0, fetched.stderr
    gguf_path = fetched.stdout.strip().splitlines()[-1]
    parsed = []
    original_init = gguf.GGUFReader.__init__

    def counting_init(self, path, *args, **kwargs):
        parsed.append(type(self))
        original_init(self, path, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counting_init)
    unverify(monkeypatch, "gguf-reader")
    with caplog.at_level(logging.WARNING, logger="safetydrift.compat"):
        info = prepare_model(ModelSpec(source=gguf_path, dtype="bfloat16"), tmp_path / "base")
    assert info["kind"] == "gguf"
    assert len(parsed) > 1 and all(cls is gguf.GGUFReader for cls in parsed), parsed
    warnings = [r.getMessage() for r in caplog.records if r.name == "safetydrift.compat"]
    assert len(warnings) == 1 and "gguf-reader: not verified with gguf" in warnings[0]
