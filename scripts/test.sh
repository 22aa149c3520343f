#!/usr/bin/env bash
# Runs the test suite, installing the project and its dev extra into .venv/ first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
exec .venv/bin/python -m pytest "$@"
