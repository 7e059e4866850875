#!/usr/bin/env bash
# Wheels for a GPU machine that has torch, numpy and tokenizers but not pydantic (the image of
# the device tool's H100/H200 machines): downloads the versions this project's environment holds,
# built for CPython ${GPU_PYTHON_VERSION:-3.12} on x86-64 Linux, into .whl/ (git-ignored).
# scripts/gpu-check.sh installs whatever it finds there before it runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$(bash scripts/bootstrap.sh)
mapfile -t pins < <("$venv/bin/python" -m pip freeze |
  grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions)==')
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
