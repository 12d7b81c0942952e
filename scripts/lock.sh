#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml (all extras a set-up installs: dev, gpu) with
# pip-tools: exact versions and sha256 hashes of every direct and transitive dependency.
#   requirements/lock-cpu.txt   CPU build of torch: development machines and CI
#   requirements/lock-cuda.txt  CUDA build of torch from PyPI: GPU machines
# Run it after changing pyproject.toml's dependencies; tests/test_lock.py fails until you do.
set -euo pipefail
cd "$(dirname "$0")/.."
compile() {
    pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
        --no-emit-index-url --no-emit-find-links --extra dev --extra gpu \
        --output-file "requirements/lock-$1.txt" pyproject.toml "requirements/$1.in"
}
compile cpu
# PyPI alone: a local CPU wheel (`2.13.0+cpu` satisfies `==2.13.0`) must not stand in for CUDA's.
PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= compile cuda
