import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import TINY_MODEL

from safetydrift.models import (
    ModelError,
    ModelSpec,
    checkpoint_kind,
    gguf_parsed_once,
    load_model,
    prepare_model,
)


def test_random_model_from_config_is_saved_as_safetensors(tmp_path):
    info = prepare_model(
        ModelSpec(source=str(TINY_MODEL), init="random", seed=3, dtype="float32"), tmp_path / "base"
    )
    files = {p.name for p in (tmp_path / "base").iterdir()}
    assert "model.safetensors" in files and not any(
        f.endswith((".bin", ".pt", ".pth")) for f in files
    )
    assert {"tokenizer.json", "config.json", "safetydrift_model.json"} <= files
    assert info["kind"] == "local" and info["init"] == "random" and info["parameters"] > 0
    assert checkpoint_kind(tmp_path / "base") == "model"
    # the same seed gives the same weights: the smoke model is reproducible
    prepare_model(
        ModelSpec(source=str(TINY_MODEL), init="random", seed=3, dtype="float32"),
        tmp_path / "again",
    )
    assert (tmp_path / "base/model.safetensors").read_bytes() == (
        tmp_path / "again/model.safetensors"
    ).read_bytes()
    from safetydrift.models import load_tokenizer

    tokenizer = load_tokenizer(tmp_path / "base")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hallo"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHallo<|im_end|>\n<|im_start|>assistant\n"


def test_a_model_without_chat_template_needs_one_from_params(tmp_path):
    source = tmp_path / "no-template"
    shutil.copytree(TINY_MODEL, source)
    (source / "chat_template.jinja").unlink()
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="no chat template; give one in `model.chat_template`"):
        prepare_model(
            ModelSpec(source=str(source), init="random", dtype="float32"), tmp_path / "base"
        )
    assert not (tmp_path / "base").exists()
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    spec = ModelSpec(source=str(source), init="random", dtype="float32", chat_template=template)
    prepare_model(spec, tmp_path / "base")
    assert (tmp_path / "base" / "chat_template.jinja").read_text() == template


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ModelError, match=r"missing\.gguf does not exist"):
        prepare_model(ModelSpec(source=str(tmp_path / "missing.gguf")), tmp_path / "base")
    with pytest.raises(ModelError, match="not a Hugging Face model directory"):
        prepare_model(ModelSpec(source=str(tmp_path)), tmp_path / "base")
    with pytest.raises(ModelError, match="`model.init`"):
        ModelSpec.from_params({"source": "x", "init": "zeros"})
    with pytest.raises(ModelError, match="holds neither a model"):
        checkpoint_kind(tmp_path)


def test_hub_ids_are_hub_sources():
    assert ModelSpec(source="meta-llama/Llama-3.2-1B-Instruct").kind == "hub"
    assert ModelSpec(source="./models/x").kind == "local"
    assert ModelSpec(source="~/m.gguf").kind == "gguf"


def test_gguf_is_dequantized_into_safetensors(tmp_path, monkeypatch):
    """A real GGUF chat model (SmolLM2-135M-Instruct, from PyPI) through transformers' loader."""
    import gguf

    parsed = []
    original_init = gguf.GGUFReader.__init__

    def counting_init(self, path, *args, **kwargs):
        parsed.append(path)
        original_init(self, path, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counting_init)
    fetched = subprocess.run(
        [
            str(TINY_MODEL.parents[3] / "shared" / "bin" / "fetch-standin-model"),
            "smollm2-135m-instruct",
        ],
        capture_output=True,
        text=True,
    )
    if fetched.returncode != 0 and not TINY_MODEL.parents[3].joinpath("shared").exists():
        pytest.skip("../shared is not beside this checkout")
    assert fetched.returncode == 0, fetched.stderr
    gguf_path = fetched.stdout.strip().splitlines()[-1]
    info = prepare_model(ModelSpec(source=gguf_path, dtype="bfloat16"), tmp_path / "base")
    assert info["kind"] == "gguf" and len(info["sha256"]) == 64
    # Tokenizer, config and weights all came from one parse of the file.
    assert len(parsed) == 1, parsed
    # The array-backed reader of that parse sees every field and tensor as gguf-py's reader does.
    with gguf_parsed_once():
        fast = gguf.GGUFReader(parsed[0])
    plain = gguf.GGUFReader(parsed[0])
    assert type(fast) is not type(plain) and fast.fields.keys() == plain.fields.keys()
    for name, field in plain.fields.items():
        same = fast.fields[name]
        assert same.data == field.data and same.types == field.types
        assert all(np.array_equal(a, b) for a, b in zip(same.parts, field.parts, strict=True))
    for same, tensor in zip(fast.tensors, plain.tensors, strict=True):
        assert same.name == tensor.name and np.array_equal(same.data, tensor.data)
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert "quantization_config" not in config
    model = load_model(tmp_path / "base", dtype="bfloat16")
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 200e6
