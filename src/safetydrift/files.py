"""Writing outputs so that a crash never leaves a file DVC would take for a finished one."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


class DiskFullError(OSError):
    """The filesystem of an output ran out of space; the output was left as it was."""


def current_umask() -> int:
    # The umask can only be read by setting it; this sets it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# How the C library words ENOSPC and EDQUOT: writers outside Python's I/O, such as safetensors'
# Rust serializer, raise their own exception types with this text in the message.
_DISK_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, says its filesystem is full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(seen) for text in _DISK_FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def _no_space_named(path: Path) -> Iterator[None]:
    """A full filesystem is one line naming the output, not a traceback from deep in a writer."""
    try:
        yield
    except Exception as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        raise DiskFullError(
            f"{path}: no space left on its filesystem; nothing was written"
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds.

    The file gets the umask's usual mode (mkstemp's is 0600, private to its owner).
    """
    path = Path(path)
    with _no_space_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            tmp_path.chmod(0o666 & ~current_umask())
            yield tmp_path
            tmp_path.replace(path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()


def partial_dirs(path: Path) -> list[Path]:
    """Temporary siblings that `atomic_dir(path)` left behind when its process was killed."""
    return sorted(path.parent.glob(f".{path.name}.*.partial"))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `path` only when the block succeeds.

    The directory gets the umask's usual mode (mkdtemp's is 0700, private to its owner).
    """
    path = Path(path)
    with _no_space_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # A run killed outright (SIGKILL, power loss) leaves its temporary directory behind.
        for stale in partial_dirs(path):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        try:
            tmp.chmod(0o777 & ~current_umask())
            yield tmp
            if path.exists():
                shutil.rmtree(path)
            tmp.replace(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file; a bad line is an error naming the file and line number."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid UTF-8 ({error})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object per line")
            rows.append(row)
    return rows


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, UTF-8 (a byte-order mark allowed).

    Every bad line is an error naming the file and line: bytes that are not UTF-8, a quote that
    is never closed, a row with more or fewer fields than the header.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        # utf-8-sig: spreadsheet programs put a byte-order mark before the first column name.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not valid UTF-8 ({error.reason})") from None
    return parse_csv(text, str(path))


def parse_csv(text: str, where: str) -> list[dict[str, str]]:
    """`read_csv` of text already decoded; `where` names it in errors."""
    # strict: a quote left open to the end of the file is an error, not one long last field.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows = []
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: name where its row began
        try:
            fields = next(reader, None)
        except csv.Error as error:
            unclosed = "end of data" in str(error)
            problem = "a quote opened here is never closed" if unclosed else error
            raise ValueError(f"{where}, line {start}: not readable as CSV ({problem})") from None
        if fields is None:
            return rows
        if header is None:
            header = fields
        elif fields and len(fields) != len(header):
            raise ValueError(
                f"{where}, line {start}: {len(fields)} field(s), but the header has "
                f"{len(header)} ({', '.join(header)})"
            )
        elif fields:
            rows.append(dict(zip(header, fields, strict=True)))


def write_csv(path: str | Path, rows: list[Mapping[str, Any]], fieldnames: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
