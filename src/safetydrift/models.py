"""The base chat model: resolving `model.source` into `models/base/`, and loading models back.

`model.source` is one of: a hub id (pinned by `model.revision`), a local Hugging Face directory,
or a `.gguf` file (dequantized by transformers). With `model.init: random` the weights are
initialised from the source's config with `model.seed` instead of loaded: the smoke preset's
tiny model, which needs no download.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.compat import fast_path_verified
from safetydrift.io import atomic_dir, write_json
from safetydrift.params import boolean

log = logging.getLogger(__name__)

MODEL_INFO_FILE = "safetydrift_model.json"
DTYPES = ("float32", "bfloat16", "float16")


class ModelError(ValueError):
    """A model that cannot be used as the study's base model, named by path or parameter."""


@dataclass
class ModelSpec:
    source: str
    revision: str | None = None
    init: str = "pretrained"  # or "random"
    seed: int = 0
    dtype: str = "bfloat16"
    chat_template: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_params(cls, model: dict[str, Any]) -> ModelSpec:
        spec = cls(
            source=str(model["source"]),
            revision=model.get("revision"),
            init=model.get("init", "pretrained"),
            seed=int(model.get("seed", 0)),
            dtype=model.get("dtype", "bfloat16"),
            chat_template=model.get("chat_template"),
            trust_remote_code=boolean(
                model.get("trust_remote_code", False), "model.trust_remote_code"
            ),
        )
        if spec.init not in ("pretrained", "random"):
            raise ModelError(
                f"params.yaml: `model.init` must be pretrained or random, got {spec.init!r}"
            )
        if spec.dtype not in DTYPES:
            raise ModelError(
                f"params.yaml: `model.dtype` must be one of {DTYPES}, got {spec.dtype!r}"
            )
        return spec

    @property
    def kind(self) -> str:
        if self.source.endswith(".gguf"):
            return "gguf"
        path = Path(self.source).expanduser()
        if path.exists() or self.source.startswith(("/", "./", "../", "~")):
            return "local"
        return "hub"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _read_chat_template(value: str) -> str:
    path = Path(value)
    if value.endswith((".jinja", ".j2", ".txt")):
        if not path.exists():
            raise ModelError(f"params.yaml: `model.chat_template` file {path} does not exist")
        return path.read_text(encoding="utf-8")
    return value


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Let transformers parse each GGUF file once, and fast, instead of once per object it builds.

    transformers reads the tokenizer, the config and the weights each through a fresh
    `gguf.GGUFReader`, and gguf-py parses a 151k-entry vocabulary element by element: for the
    stand-in model three parses took ~40 s of the ~75 s that `prepare_model` spent. The reader
    only maps the file read-only, so one reader per path can serve all three. Each element is a
    slice of the mapped file; slicing a `numpy.memmap` runs Python code (`__getitem__`,
    `__array_finalize__`) that slicing a plain array over the same bytes does not, so the reader
    sees the mapping as a plain array: 9.4 s -> 2.9 s for the stand-in's parse, same fields.
    """
    import gguf

    original = gguf.GGUFReader
    gguf.GGUFReader = functools.lru_cache(maxsize=4)(_array_backed(original))
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _array_backed(reader_class):
    import numpy as np

    class ArrayBackedReader(reader_class):
        @property
        def data(self):
            return self._mapped

        @data.setter
        def data(self, value):
            # The same read-only mapped bytes, as an ndarray instead of a memmap.
            self._mapped = value.view(np.ndarray)

    return ArrayBackedReader


def load_source(spec: ModelSpec):
    """(model, tokenizer, provenance) from the source, before anything is written."""
    if spec.kind == "gguf" and fast_path_verified("gguf-reader"):
        with gguf_parsed_once():
            return _load_source(spec)
    return _load_source(spec)


def _load_source(spec: ModelSpec):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kind = spec.kind
    info: dict[str, Any] = {
        "source": spec.source,
        "kind": kind,
        "init": spec.init,
        "dtype": spec.dtype,
    }
    common = {"trust_remote_code": spec.trust_remote_code}
    if kind == "gguf":
        path = Path(spec.source).expanduser()
        if not path.exists():
            raise ModelError(f"params.yaml: `model.source` {path} does not exist")
        from safetydrift.data import sha256_file

        info["sha256"] = sha256_file(path)
        location, common["gguf_file"] = str(path.parent), path.name
    elif kind == "local":
        path = Path(spec.source).expanduser()
        if not (path / "config.json").exists():
            raise ModelError(
                f"params.yaml: `model.source` {path} is not a Hugging Face model directory "
                "(no config.json)"
            )
        location = str(path)
    else:
        location = spec.source
        common["revision"] = spec.revision
        info["revision"] = spec.revision or "main"
        from safetydrift.data import check_hub_source, resolve_hub_revision

        check_hub_source(spec.source, spec.revision, "model", "model.source")
        info["resolved_revision"] = resolve_hub_revision(spec.source, spec.revision, "model")

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
    except OSError as error:  # transformers' "not a valid model identifier", offline misses
        reason = " ".join(str(error).split())  # one line: transformers' messages span several
        raise ModelError(f"params.yaml: `model.source` {spec.source!r}: {reason}") from None
    if spec.chat_template:
        tokenizer.chat_template = _read_chat_template(spec.chat_template)
    if not tokenizer.chat_template:
        raise ModelError(
            f"{spec.source}: the tokenizer has no chat template; give one in `model.chat_template` "
            "(a Jinja string or a .jinja file)"
        )
    if spec.init == "random":
        import torch

        config = AutoConfig.from_pretrained(location, **common)
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(spec.dtype))
        info["seed"] = spec.seed
    else:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype(spec.dtype), **common
        )
    if kind == "gguf":
        # transformers marks a GGUF-loaded model as quantized although its weights are now plain
        # tensors; without clearing that, save_pretrained refuses to write it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tokenizer.pad_token is None:
        # Batched generation pads on the left; the end-of-sequence token is never attended to.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, info


def prepare_model(spec: ModelSpec, out_dir: Path) -> dict[str, Any]:
    """Write the base model as safetensors with its tokenizer and chat template."""
    model, tokenizer, info = load_source(spec)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["architecture"] = type(model).__name__
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MODEL_INFO_FILE, info)
    return info


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: str = "bfloat16", device: str | None = None, **kwargs):
    from transformers import AutoModelForCausalLM

    if device:
        # Straight onto the device: no full copy of the weights in host memory first.
        kwargs.setdefault("device_map", device)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype), **kwargs)


def checkpoint_kind(path: Path) -> str:
    """`adapter` (PEFT weights only) or `model` (full weights); anything else is an error."""
    if (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists():
        return "adapter"
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return "model"
    raise ModelError(
        f"{path}: holds neither a model (config.json + *.safetensors) nor a PEFT adapter "
        "(adapter_config.json + adapter_model.safetensors)"
    )


def read_model_info(path: Path) -> dict[str, Any]:
    info = path / MODEL_INFO_FILE
    return json.loads(info.read_text(encoding="utf-8")) if info.exists() else {}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
