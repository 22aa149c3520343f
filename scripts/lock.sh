#!/usr/bin/env bash
# Writes constraints.txt from .venv-latest/, the environment of `AFDCD_DEPS=latest ./scripts/test.sh`:
# run that first, and lock only what it passed with. Prints what changed against the old lock.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-latest/bin/python ] || { echo "no .venv-latest/: run AFDCD_DEPS=latest ./scripts/test.sh first" >&2; exit 1; }
new=$(mktemp)
{ sed -n '1,/^[^#]/{/^#/p}' constraints.txt; .venv-latest/bin/python -m pip freeze --exclude-editable; } > "$new"
diff <(grep -v '^#' constraints.txt) <(grep -v '^#' "$new") | grep '^[<>]' || echo "no version changed"
mv "$new" constraints.txt
