"""A judge's model: found (hub id, local safetensors directory or GGUF file) and checked before any
work (it exists, holds safetensors weights, has a chat template that renders the judge's
conversation, fits the device), loaded once per process and shared by the judges that use it, and
run greedily over conversations with the project's engines; `prepare_judge_model` writes it once as
a safetensors directory for the stages that follow.

torch and transformers are imported inside the functions that need them, for their import cost
(~2 s together on this project's 2-core machine): the judge stages and `safetydrift check`, which
import this module at their top, check their params and inputs before they need either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import psutil
from huggingface_hub import snapshot_download
from safetensors import safe_open

from safetydrift.generation.engines import build_engine
from safetydrift.gpu_slots import hold_judge_slot
from safetydrift.model_judges.spec import JudgeModelSpec
from safetydrift.models import (
    ModelError,
    _read_chat_template,
    gguf_parsed_once,
    load_source,
    prepare_model,
    torch_dtype,
)

# Only what loading needs: never `*.bin` / `*.pt` weights (pickles), never code unless asked for.
HUB_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken")


def resolve_source(spec: JudgeModelSpec) -> tuple[str, dict[str, Any]]:
    """(where to load from, provenance): a hub id becomes its local snapshot of safetensors."""
    kind = spec.model_spec().kind
    path = Path(spec.source).expanduser()
    if kind == "gguf":
        if not path.is_file():
            raise ModelError(f"judge `{spec.name}`: model file {path} does not exist")
        return str(path), {"source": spec.source, "kind": kind}
    if kind == "local":
        if not (path / "config.json").is_file():
            raise ModelError(
                f"judge `{spec.name}`: {path} is not a Hugging Face model directory "
                "(no config.json)"
            )
        if not any(path.glob("*.safetensors")):
            raise ModelError(
                f"judge `{spec.name}`: {path} holds no *.safetensors weights (other weight "
                "formats are pickles and are not loaded)"
            )
        return str(path), {"source": spec.source, "kind": kind}
    patterns = [*HUB_PATTERNS, "*.py"] if spec.trust_remote_code else list(HUB_PATTERNS)
    try:
        local = snapshot_download(spec.source, revision=spec.revision, allow_patterns=patterns)
    except Exception as error:  # offline, gated, misspelt: one line, naming the id
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"judge `{spec.name}`: hub model {spec.source}@{spec.revision or 'main'} cannot be "
            f"read from the hub or the local cache ({reason})"
        ) from None
    if not any(Path(local).glob("*.safetensors")):
        raise ModelError(
            f"judge `{spec.name}`: hub model {spec.source}@{spec.revision or 'main'} has no "
            "safetensors weights (other weight formats are pickles and are not loaded)"
        )
    # The snapshot folder is named by the commit it holds.
    return local, {
        "source": spec.source,
        "kind": kind,
        "revision": spec.revision or "main",
        "resolved_revision": Path(local).name,
    }


def parameter_count(location: str) -> int:
    """Parameters stored in a safetensors directory or a GGUF file, read from headers only."""
    path = Path(location)
    if path.suffix == ".gguf":
        with gguf_parsed_once():
            return sum(int(t.n_elements) for t in gguf.GGUFReader(str(path)).tensors)
    total = 0
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                count = 1
                for size in handle.get_slice(key).get_shape():
                    count *= size
                total += count
    return total


def free_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch  # the import cost: see the module's docstring

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return int(psutil.virtual_memory().available)


def check_fits(spec: JudgeModelSpec, location: str, device: str) -> int:
    """The bytes the judge's weights take in its dtype; a ModelError if they exceed the budget.

    Only the weights are counted: the KV cache of a batch comes on top, and `batch_size` is the
    knob if generating then runs out of memory.
    """
    needed = parameter_count(location) * torch_dtype(spec.dtype).itemsize
    if spec.memory_budget_gb is not None:
        budget, what = int(spec.memory_budget_gb * 2**30), "the memory budget"
    else:
        budget, what = free_memory_bytes(device), f"free on {device}"
    if needed > budget:
        raise ModelError(
            f"judge `{spec.name}`: model {spec.source} needs {needed / 2**20:,.1f} MiB for its "
            f"weights in {spec.dtype}, but {budget / 2**20:,.1f} MiB are {what}; use a smaller "
            "model or dtype, or free memory"
        )
    return needed


def content_parts(conversation: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [
        {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
        for m in conversation
    ]


# (location, dtype, device, chat template) -> (model, tokenizer, provenance), for this process.
_LOADED_MODELS: dict[tuple[Any, ...], tuple[Any, Any, dict[str, Any]]] = {}


class JudgeModel:
    """The judge's model and tokenizer, checked at construction, loaded once on `load()`."""

    def __init__(self, spec: JudgeModelSpec, device: str, probe: list[dict[str, str]]) -> None:
        from transformers import AutoTokenizer  # the import cost: see the module's docstring

        self.spec = spec
        self.device = device
        self.location, self.info = resolve_source(spec)
        self.weight_bytes = check_fits(spec, self.location, device)
        self.probe = probe
        self.tokenizer = None
        # Whether messages go to the template as content parts; None until the template is read.
        self.content_as_parts: bool | None = None
        if spec.model_spec(self.location).kind != "gguf":
            # (Reading a GGUF's tokenizer means parsing the whole file: load() reads it once, and
            # models.load_source checks its chat template there, before the weights.)
            tokenizer = AutoTokenizer.from_pretrained(
                self.location, trust_remote_code=spec.trust_remote_code
            )
            self._set_template(tokenizer)
            self.content_as_parts = self._content_style(tokenizer, probe)
        self.model = None
        self.engine = None

    def _set_template(self, tokenizer) -> None:
        if self.spec.chat_template:
            tokenizer.chat_template = _read_chat_template(self.spec.chat_template)
        if not tokenizer.chat_template:
            raise ModelError(
                f"judge `{self.spec.name}`: model {self.spec.source} has no chat template; set "
                "one in the judge's `chat_template` (a Jinja string or a .jinja file)"
            )

    def _content_style(self, tokenizer, probe: list[dict[str, str]]) -> bool:
        """Whether messages go to the template as content parts (Llama-Guard-3-1B's template
        reads `content` as a list of {type, text}; given a string it drops the text silently)."""
        errors = []
        for as_parts in (False, True):
            conversation = content_parts(probe) if as_parts else probe
            try:
                text = tokenizer.apply_chat_template(
                    conversation, tokenize=False, add_generation_prompt=True
                )
            except Exception as error:  # a template may raise on a role or a shape it rejects
                errors.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
                continue
            if all(m["content"] in text for m in probe):
                return as_parts
        roles = " + ".join(m["role"] for m in probe)
        raise ModelError(
            f"judge `{self.spec.name}`: the chat template of {self.spec.source} does not render "
            f"a {roles} conversation with its text ({'; '.join(errors) or 'the text is dropped'})"
            "; set the judge's `chat_template`"
        )

    def load(self) -> None:
        if self.model is not None:
            return
        # Judges that share a model (a rubric and a classifier prompt on one instruct model)
        # share its weights in memory: one load per stage.
        key = (self.location, self.spec.dtype, self.device, self.spec.chat_template)
        if key in _LOADED_MODELS:
            model, tokenizer, info = _LOADED_MODELS[key]
            self._finish_load(model, tokenizer, info)
            return
        # One of the GPU's judge slots (`runtime.judges_per_gpu`) before the weights go there.
        hold_judge_slot(self.device)
        try:
            model, tokenizer, info = load_source(self.spec.model_spec(self.location))
        except ModelError as error:
            if "no chat template" not in str(error):
                raise
            raise ModelError(
                f"judge `{self.spec.name}`: model {self.spec.source} has no chat template; set "
                "one in the judge's `chat_template` (a Jinja string or a .jinja file)"
            ) from None
        model = model.to(self.device).eval()
        _LOADED_MODELS[key] = (model, tokenizer, info)
        self._finish_load(model, tokenizer, info)

    def _finish_load(self, model, tokenizer, info: dict[str, Any]) -> None:
        if self.content_as_parts is None:
            self.content_as_parts = self._content_style(tokenizer, self.probe)
        self.tokenizer = tokenizer
        self.info = {**info, **self.info, "dtype": self.spec.dtype}
        self.model = model
        self.engine = build_engine(tokenizer, self.spec.generation_settings())

    def generate(self, conversations: list[list[dict[str, str]]]) -> list[tuple[str, str]]:
        """(output text, finish reason) for each conversation, in order, greedy."""
        self.load()
        tokenizer = self.tokenizer
        if self.content_as_parts:
            conversations = [content_parts(c) for c in conversations]
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        # The chat template already holds the special tokens it wants.
        prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        for index, ids in enumerate(prompt_ids):
            if limit and len(ids) + self.spec.new_tokens > limit:
                raise ModelError(
                    f"judge `{self.spec.name}`: row {index} needs {len(ids)} prompt tokens + "
                    f"{self.spec.new_tokens} new ones, more than the {limit} positions of "
                    f"{self.spec.source}"
                )
        outputs = self.engine.generate(self.model, prompt_ids)
        decoded = tokenizer.batch_decode(
            [tokens for tokens, _ in outputs], skip_special_tokens=True
        )
        return [(text, reason) for text, (_, reason) in zip(decoded, outputs, strict=True)]


def prepare_judge_model(spec: JudgeModelSpec, out_dir: Path) -> dict[str, Any]:
    """Write the judge's model as a safetensors directory once (a GGUF file is dequantized here),
    so that every later stage loads it in seconds: point the judge's `source` at `out_dir`."""
    location, provenance = resolve_source(spec)
    info = prepare_model(spec.model_spec(location), out_dir)
    return {**info, **provenance}
