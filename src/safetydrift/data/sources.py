"""Where a data set comes from (a local file or a pinned hub id) and its rows read: local JSON
Lines, CSV and Parquet files by file and line, hub data sets after one quick check that the hub
has them."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.files import read_csv, read_jsonl

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".parquet", ".csv")


class DataError(ValueError):
    """Input data that the pipeline cannot use, named by file, row or parameter."""


@dataclass
class Source:
    """Where a data set comes from: a local file or a hub id (with its pinned revision)."""

    location: str
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return (
            self.location.endswith(LOCAL_SUFFIXES)
            or self.location.startswith(("/", "./", "../", "~"))
            or Path(self.location).exists()
        )

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))

    def describe(self) -> dict[str, Any]:
        """What identifies the exact bytes read: a file's SHA-256, or the hub revision."""
        if self.is_local:
            return {"source": self.location, "sha256": sha256_file(Path(self.location))}
        return {"source": self.location, "revision": self.revision or "main"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_local_table(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".csv":
        return read_csv(path)
    if path.suffix == ".parquet":
        # Imported here: pyarrow.parquet takes ~0.1 s to import (measured), and only a Parquet
        # file needs it.
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"{path}: unsupported file type (expected one of {', '.join(LOCAL_SUFFIXES)})")


# Long enough for a slow link; short beside the ~25 s of retries that the hub libraries spend on
# a host that cannot be reached before they give up.
HUB_TIMEOUT_SECONDS = 10


def check_hub_source(hub_id: str, revision: str | None, repo_type: str, key: str) -> None:
    """Fail at once, in one line, where a hub source cannot be had.

    Asked once with a short timeout: an id that does not exist, a gated or private repository, a
    revision that does not exist, or a hub that cannot be reached while the local cache has no
    copy. With `HF_HUB_OFFLINE=1` the libraries read only the local cache, and fail fast.
    """
    # Imported here: huggingface_hub.constants reads HF_HUB_OFFLINE when first imported, so a
    # process may set or unset it after importing this module (tests/test_faults.py does); and
    # the hub's modules take ~40 ms to import (measured), which local sources never need.
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"params.yaml: `{key}` {hub_id!r}"
    if constants.HF_HUB_OFFLINE:
        return
    try:
        huggingface_hub.HfApi().repo_info(
            hub_id, revision=revision, repo_type=repo_type, timeout=HUB_TIMEOUT_SECONDS
        )
        return
    except GatedRepoError:
        raise DataError(
            f"{where}: gated on the Hugging Face Hub; accept its terms on its page and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise DataError(
            f"{where}: no such {repo_type} on the Hugging Face Hub (or it is private: log in "
            "with `hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise DataError(f"{where}: no revision {revision!r} on the Hugging Face Hub") from None
    except HfHubHTTPError as error:
        raise DataError(f"{where}: the Hugging Face Hub refused ({error})") from None
    except Exception as error:  # the host cannot be reached (DNS, connection, timeout)
        unreachable = f"{type(error).__name__}: {error}"
    try:
        huggingface_hub.snapshot_download(
            hub_id, revision=revision, repo_type=repo_type, local_files_only=True
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise DataError(
            f"{where}: the Hugging Face Hub cannot be reached ({unreachable}) and the local "
            f"cache has no copy; connect, or set `{key}` to a local path"
        ) from None
    log.warning(
        "%s: the Hugging Face Hub cannot be reached (%s); reading the local cache "
        "(HF_HUB_OFFLINE=1 skips the libraries' retries)",
        hub_id,
        unreachable,
    )


def read_hub_table(
    hub_id: str, revision: str | None, split: str, key: str = "data.mtpref.source"
) -> list[dict[str, Any]]:
    # Imported here: datasets takes ~0.6 s to import (measured), and only a hub source needs it.
    import datasets
    from huggingface_hub.errors import HfHubHTTPError

    check_hub_source(hub_id, revision, "dataset", key)
    try:
        dataset = datasets.load_dataset(hub_id, revision=revision, split=split)
    except (OSError, HfHubHTTPError, datasets.exceptions.DatasetNotFoundError) as error:
        raise DataError(f"params.yaml: `{key}` {hub_id!r}: cannot be loaded ({error})") from None
    return dataset.to_list()


def resolve_hub_revision(
    hub_id: str, revision: str | None, repo_type: str = "dataset"
) -> str | None:
    """The commit sha behind a branch name, so the stats record what was really read."""
    try:
        # Imported here: HfApi takes ~0.1 s to import (measured), and only a hub source needs it.
        from huggingface_hub import HfApi

        return HfApi().repo_info(hub_id, revision=revision, repo_type=repo_type).sha
    except Exception as error:  # offline or gated: the requested revision is still recorded
        log.warning("could not resolve the revision of %s (%s)", hub_id, error)
        return None


def read_source(
    source: Source, split: str = "train", key: str = "data.mtpref.source"
) -> list[dict[str, Any]]:
    """Rows of a local file or a hub data set; `key` is the params key that named it (the
    default: prepare_mtpref's)."""
    if source.is_local:
        return read_local_table(Path(source.location))
    if source.is_url:
        raise DataError(f"{source.location}: URLs are read only for AdvBench CSV files")
    return read_hub_table(source.location, source.revision, split, key)


def require_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], where: str) -> None:
    """Every row has every column; the first row that lacks one is named by its number."""
    if not rows:
        raise DataError(f"{where}: no rows")
    present = set(rows[0])
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)} "
            f"(present: {', '.join(sorted(present))})"
        )
    for number, row in enumerate(rows, start=1):
        if missing := [c for c in columns if c not in row]:
            raise DataError(
                f"{where}, row {number}: missing column(s) {', '.join(missing)} "
                "(the first row has them)"
            )


def nonempty_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
