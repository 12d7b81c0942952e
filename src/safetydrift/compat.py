"""The library versions each fast path was verified against, and the plain path on any other.

Three parts of the project lean on library internals rather than public APIs:

- `cudagraphs` (training's CUDA graphs): which keyword arguments a transformers decoder's
  `forward` receives from TRL's trainer and how a 4-D mask is taken as given. transformers 5.24
  renamed `past_key_values` to `cache` there; before that was known, the graphs were silently
  never entered.
- `static-decoding` (`generation.backend: static`): transformers' `StaticCache`, its attention
  interface registry and `masking_utils` returning a 4-D mask as is.
- `gguf-reader` (`models.gguf_parsed_once`): `gguf.GGUFReader`'s `data` attribute, which it
  replaces by a plain array view of the same mapped bytes.

On versions outside these ranges each part takes the plain library path (eager training,
transformers' `generate`, gguf's own reader) with one warning line, so a new release can make a
run slower but never silently wrong. Widen a range only after the tests of that part pass on the
new version (CPU) and, for the CUDA paths, a GPU run (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import PackageNotFoundError, version

from packaging.specifiers import SpecifierSet
from packaging.version import Version

log = logging.getLogger(__name__)

# feature -> {distribution: versions verified}. torch 2.11 is the GPU image's, 2.13 the lock's.
VERIFIED: dict[str, dict[str, str]] = {
    "cudagraphs": {"torch": ">=2.11,<2.14", "transformers": ">=5.17,<5.25"},
    "static-decoding": {"torch": ">=2.11,<2.14", "transformers": ">=5.17,<5.25"},
    "gguf-reader": {"gguf": ">=0.17,<0.20"},
}

PLAIN_PATH = {
    "cudagraphs": "training runs the decoder eagerly (no CUDA graphs)",
    "static-decoding": "generation uses transformers' `generate` (backend `hf`)",
    "gguf-reader": "GGUF files are parsed by gguf's own reader (slower, same result)",
}


def installed_version(distribution: str) -> Version | None:
    try:
        # A local build label (`2.13.0+cpu`) is the same release for these ranges.
        return Version(Version(version(distribution)).public)
    except PackageNotFoundError:
        return None


def unverified_libraries(feature: str) -> list[str]:
    """`name version (verified: range)` for each library of `feature` outside its range."""
    problems = []
    for distribution, verified in VERIFIED[feature].items():
        installed = installed_version(distribution)
        if installed is None or installed not in SpecifierSet(verified):
            problems.append(f"{distribution} {installed or 'not installed'} (verified: {verified})")
    return problems


def fast_path_verified(feature: str) -> bool:
    """Whether `feature`'s fast path may run here; warns once per process when it may not."""
    problems = unverified_libraries(feature)
    if problems:
        _warn_once(feature, "; ".join(problems))
    return not problems


@functools.cache
def _warn_once(feature: str, problems: str) -> None:
    log.warning("%s: not verified with %s; %s", feature, problems, PLAIN_PATH[feature])
