"""BASE and TUNED as the flags give them (a local folder, a GGUF file, a hub id; TUNED maybe a PEFT
adapter on BASE): checked before any work, then resolved to local folders of safetensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from safetydrift.check.settings import CheckError
from safetydrift.data.sources import DataError, check_hub_source
from safetydrift.files import read_json
from safetydrift.model_judges.loading import HUB_PATTERNS
from safetydrift.models import (
    ModelError,
    ModelSpec,
    PromptFormat,
    checkpoint_kind,
    load_tokenizer,
    prepare_model,
)


@dataclass
class ModelInput:
    """BASE or TUNED as given, and where its weights are once resolved."""

    flag: str  # --base or --tuned
    source: str
    revision: str | None = None
    adapter: bool = False
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return ModelSpec(source=self.source).kind

    def check_local(self) -> None:
        """A local source exists and is what the flags say; a hub id is checked on the hub."""
        kind = self.kind
        where = f"{self.flag} {self.source}"
        if self.adapter:
            path = Path(self.source).expanduser()
            if kind != "local" or not path.is_dir():
                raise CheckError(
                    f"{where}: no such directory (--adapter needs a local PEFT adapter)"
                )
            if not (path / "adapter_config.json").is_file():
                raise CheckError(
                    f"{where}: not a PEFT adapter (no adapter_config.json); without --adapter "
                    "TUNED is a full model"
                )
            checkpoint_kind(path)  # adapter_model.safetensors there too, named if missing
            return
        if kind == "gguf":
            if not Path(self.source).expanduser().is_file():
                raise CheckError(f"{where}: no such GGUF file")
            return
        if kind == "hub":
            key = self.flag.removeprefix("--")
            try:
                check_hub_source(self.source, self.revision, "model", key)
            except DataError as error:
                # Its message starts by naming a params key; here the flag says that.
                reason = str(error).removeprefix(f"params.yaml: `{key}` {self.source!r}: ")
                raise CheckError(
                    f"{where}: no such local directory, and as a Hugging Face Hub id: {reason}"
                ) from None
            return
        path = Path(self.source).expanduser()
        if not path.is_dir():
            raise CheckError(f"{where}: no such directory")
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise CheckError(f"{where}: holds a PEFT adapter; pass --adapter to apply it to BASE")
        if not (path / "config.json").is_file():
            raise CheckError(f"{where}: not a Hugging Face model directory (no config.json)")
        if not any(path.glob("*.safetensors")):
            raise CheckError(
                f"{where}: holds no *.safetensors weights (other weight formats are pickles and "
                "are not loaded)"
            )

    def resolve(self, work_dir: Path, dtype: str) -> None:
        """Set `path` to a local folder of safetensors: a GGUF file is dequantized once into
        `work_dir` (`models.prepare_model`), a hub id becomes its local snapshot."""
        kind = self.kind
        if kind == "local":
            self.path = Path(self.source).expanduser()
            self.info = {"source": self.source, "kind": kind}
        elif kind == "gguf":
            self.path = work_dir / self.flag.removeprefix("--")
            info = prepare_model(ModelSpec(source=self.source, dtype=dtype), self.path)
            self.info = {**info, "source": self.source}
        else:
            local = snapshot_download(
                self.source, revision=self.revision, allow_patterns=list(HUB_PATTERNS)
            )
            self.path = Path(local)
            # The snapshot folder is named by the commit it holds.
            self.info = {
                "source": self.source,
                "kind": kind,
                "revision": self.revision or "main",
                "resolved_revision": self.path.name,
            }
            if not any(self.path.glob("*.safetensors")):
                raise CheckError(
                    f"{self.flag} {self.source}: has no safetensors weights on the hub (other "
                    "weight formats are pickles and are not loaded)"
                )
        if self.adapter:
            config = read_json(self.path / "adapter_config.json")
            self.info["adapter_base_model"] = config.get("base_model_name_or_path")
        self.info["adapter"] = self.adapter


def chat_template(model: ModelInput, tokenizer_dir: Path, prompt_format: PromptFormat) -> str:
    """The model's chat template, checked to be there when the prompt format needs it."""
    tokenizer = load_tokenizer(tokenizer_dir)
    if prompt_format.template is None and not tokenizer.chat_template:
        raise CheckError(
            f"{model.flag} {model.source}: its tokenizer has no chat template; pass "
            "--prompt-format (chatml, authors-llama3, or a format string holding {user} and "
            "{assistant})"
        )
    try:
        prompt_format.check(tokenizer)
    except ModelError as error:
        # Its advice names the params keys; the flags are the same settings.
        raise CheckError(
            f"{model.flag} {model.source}: {error} (flags: --date-string, --prompt-format)"
        ) from None
    return tokenizer.chat_template or ""
