#!/usr/bin/env bash
# Installs the project into .venv/ (creating it) and stays quiet and quick when that is done.
# Usage: scripts/bootstrap.sh [extra,...]   e.g. scripts/bootstrap.sh dev
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-}
venv="$root/.venv"
py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  echo "afdcd-bench: python3 not found; install Python >= 3.10 first." >&2
  exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "afdcd-bench: Python >= 3.10 is needed, found $("$py" --version 2>&1)." >&2
  exit 1
fi
stamp="$venv/.afdcd-installed${extras:+-$extras}"
want=$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c 'import afdcd_bench' 2>/dev/null; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "afdcd-bench: creating $venv" >&2
  "$py" -m venv "$venv" || { echo "afdcd-bench: could not create a virtual environment (install python3-venv)." >&2; exit 1; }
fi
echo "afdcd-bench: installing dependencies into .venv (first run takes a few minutes)" >&2
target="$root"
[ -n "$extras" ] && target="$root[$extras]"
if ! "$venv/bin/python" -m pip install -q -e "$target" >"$venv/.install.log" 2>&1; then
  tail -n 20 "$venv/.install.log" >&2
  echo "afdcd-bench: pip install failed; full log in $venv/.install.log" >&2
  exit 1
fi
echo "$want" > "$stamp"
