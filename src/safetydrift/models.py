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

import numpy as np

from safetydrift.compat import fast_path_verified
from safetydrift.data.sources import check_hub_source, resolve_hub_revision, sha256_file
from safetydrift.files import atomic_dir, write_json
from safetydrift.params import boolean, choice

log = logging.getLogger(__name__)

# torch and transformers (~3 s to import, warm) are imported inside the functions that load models:
# the train stage and `safetydrift check` import this module to check their params and options,
# and fail on a bad one, before any model is needed.

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
        choice(spec.dtype, DTYPES, "model.dtype", ModelError)
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
    import torch  # import cost: top of module

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
    import gguf  # only GGUF sources need it

    original = gguf.GGUFReader
    gguf.GGUFReader = functools.lru_cache(maxsize=4)(_array_backed(original))
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _array_backed(reader_class):
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
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # cost: top of module

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
        import torch  # import cost: top of module

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
    from transformers import AutoTokenizer  # import cost: top of module

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: str = "bfloat16", device: str | None = None, **kwargs):
    from transformers import AutoModelForCausalLM  # import cost: top of module

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
    import torch  # import cost: top of module

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------
# Prompt formats: how a conversation becomes the text that training and generation both encode

CHAT_TEMPLATE = "chat-template"
# A format string holds `{user}` and `{assistant}`: the prompt is what comes before `{assistant}`,
# the end of the assistant's turn what comes after it. Nothing is added when it is encoded: a
# format that wants a BOS token writes it.
PROMPT_FORMATS = {
    # The seed authors' hand-built Llama-3 string, with no system block (issue 21).
    "authors-llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{assistant}<|eot_id|>"
    ),
    # Qwen2.5's ChatML as its template renders a user turn, without the default system prompt
    # ("You are Qwen, created by Alibaba Cloud...") that the template adds when none is given.
    "chatml": "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>",
}
# Two dates a chat template is rendered with to find out whether its text depends on the date.
PROBE_DATES = ("01 Jan 2000", "02 Feb 2001")


def split_completion(prompt_ids: list[int], full_ids: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a whole exchange's tokens: the completion is what the
    exchange adds after the tokens it shares with the prompt alone, as TRL splits it."""
    shared = 0
    for prompt_token, full_token in zip(prompt_ids, full_ids, strict=False):
        if prompt_token != full_token:
            break
        shared += 1
    return full_ids[:shared], full_ids[shared:]


@dataclass
class PromptFormat:
    """`prompt.format` (a name of PROMPT_FORMATS, `chat-template`, or a format string) and
    `prompt.date_string` (the date a dated chat template is rendered with)."""

    format: str = CHAT_TEMPLATE
    date_string: str | None = None

    @classmethod
    def from_params(cls, values: dict[str, Any] | None) -> PromptFormat:
        values = values or {}
        prompt_format = cls(
            format=str(values.get("format", CHAT_TEMPLATE)), date_string=values.get("date_string")
        )
        template = prompt_format.template
        if template is not None and (
            template.count("{user}") != 1 or template.count("{assistant}") != 1
        ):
            raise ModelError(
                f"params.yaml: `prompt.format` must be {CHAT_TEMPLATE}, one of "
                f"{', '.join(PROMPT_FORMATS)}, or a string holding `{{user}}` and `{{assistant}}` "
                f"once each, got {prompt_format.format!r}"
            )
        return prompt_format

    @property
    def template(self) -> str | None:
        if self.format == CHAT_TEMPLATE:
            return None
        return PROMPT_FORMATS.get(self.format, self.format)

    def check(self, tokenizer) -> None:
        """Refuse a chat template whose rendering changes with the day, unless a date is pinned."""
        if self.template is not None or self.date_string is not None:
            return
        source = tokenizer.chat_template or ""
        if "strftime_now" not in source and "date_string" not in source:
            return
        probe = [{"role": "user", "content": "x"}]
        renderings = {
            tokenizer.apply_chat_template(
                probe, tokenize=False, add_generation_prompt=True, date_string=date
            )
            for date in PROBE_DATES
        }
        if len(renderings) > 1 or "date_string" not in source:
            raise ModelError(
                "params.yaml: the model's chat template writes today's date into every prompt, so "
                "the prompts change with the day; pin it with `prompt.date_string` (e.g. "
                "'26 Jul 2024'), or set `prompt.format` to a format string or a named format "
                f"({', '.join(PROMPT_FORMATS)})"
            )

    def _render_template(self, tokenizer, messages: list[dict[str, str]], **kwargs) -> str:
        if self.date_string is not None:
            kwargs["date_string"] = self.date_string
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    def render_prompt(self, tokenizer, messages: list[dict[str, str]]) -> str:
        """The text before the assistant's answer."""
        template = self.template
        if template is None:
            return self._render_template(tokenizer, messages, add_generation_prompt=True)
        if len(messages) != 1 or messages[0]["role"] != "user":
            raise ModelError(
                f"params.yaml: `prompt.format` {self.format!r} holds one user turn only: leave "
                "the prompts' `system_prompt` null, or use `prompt.format: chat-template`"
            )
        return template.split("{assistant}")[0].replace("{user}", messages[0]["content"])

    def encode_prompt(self, tokenizer, messages: list[dict[str, str]]) -> list[int]:
        # The rendered text holds every special token it wants (a BOS included): adding the
        # tokenizer's own would put a second BOS before it.
        return tokenizer(self.render_prompt(tokenizer, messages), add_special_tokens=False)[
            "input_ids"
        ]

    def encode_exchange(self, tokenizer, user: str, assistant: str) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids) of one user turn and its answer, the end of turn included.

        The completion is what the whole exchange adds to the prompt's tokens, as TRL splits it.
        """
        messages = [{"role": "user", "content": user}]
        prompt_ids = self.encode_prompt(tokenizer, messages)
        template = self.template
        if template is None:
            text = self._render_template(
                tokenizer, [*messages, {"role": "assistant", "content": assistant}]
            )
        else:
            before, after = template.split("{assistant}")
            text = before.replace("{user}", user) + assistant + after
        return split_completion(prompt_ids, tokenizer(text, add_special_tokens=False)["input_ids"])
