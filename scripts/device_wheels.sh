#!/usr/bin/env bash
# The wheels the GPU image lacks (soundfile with its libsndfile, cffi, pycparser, soxr), for Python
# 3.12 manylinux, into .whl/ (ignored by git; carry it to the device call: scripts/device_train.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for pin in $(grep -E '^(soundfile|cffi|pycparser|soxr)==' requirements/constraints.txt); do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pin"
done
ls -la .whl
