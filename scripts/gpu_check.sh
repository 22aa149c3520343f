#!/usr/bin/env bash
# The one-command GPU check: tests marked gpu, step timings and projected hours of the Cityscapes
# recipe, bf16 against fp32. Writes results/gpu/gpu_check-*.json. `--cpu`: the same chain on the
# CPU at tiny shapes (the test suite runs it). benchmarks/gpu_check.py says what it measures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
exec .venv/bin/python benchmarks/gpu_check.py "$@"
