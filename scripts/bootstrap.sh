#!/usr/bin/env bash
# Installs the project into .venv/ (creating it) and stays quiet and quick when that is done.
# Usage: scripts/bootstrap.sh [extra,...]   e.g. scripts/bootstrap.sh dev
# By default every package is held to the version in constraints.txt, the set the suite last passed
# with; AFDCD_DEPS=latest installs the newest releases instead, into .venv-latest/ (docs/dependencies.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-}
deps=${AFDCD_DEPS:-locked}
case "$deps" in
  locked) venv="$root/.venv"; pin=(-c "$root/constraints.txt") ;;
  latest) venv="$root/.venv-latest"; pin=(--upgrade --upgrade-strategy eager) ;;
  *) echo "afdcd-bench: AFDCD_DEPS=$deps: use locked (the default: constraints.txt) or latest" >&2; exit 2 ;;
esac
py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  echo "afdcd-bench: python3 not found; install Python >= 3.10 first." >&2
  exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "afdcd-bench: Python >= 3.10 is needed, found $("$py" --version 2>&1)." >&2
  exit 1
fi
# One stamp: the hash of pyproject.toml and constraints.txt, then every extra installed so far. A request whose extras
# are all installed already (e.g. none after `dev`) installs nothing.
stamp="$venv/.afdcd-installed"
# latest: the date too, so the newest releases are looked for again once a day
want=$( { cat "$root/pyproject.toml" "$root/constraints.txt"; [ "$deps" = locked ] || date +%F; } | sha256sum | cut -c1-16)
have_hash="" have_extras=""
[ -f "$stamp" ] && read -r have_hash have_extras < "$stamp" || true
[ "$have_hash" = "$want" ] || have_extras=""
union=$(printf '%s\n' ${have_extras//,/ } ${extras//,/ } | sort -u | paste -sd, -)
installed_here() {
  # Asked from another folder: from the repository root `import afdcd_bench` finds the working
  # tree even when the environment's own install points at a folder that no longer exists.
  (cd / && "$venv/bin/python" -c 'import os, sys, afdcd_bench
sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(afdcd_bench.__file__))) != os.path.realpath(sys.argv[1]))' "$root") 2>/dev/null
}
if [ -n "$have_hash" ] && [ "$union" = "$have_extras" ] && installed_here; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "afdcd-bench: creating $venv" >&2
  "$py" -m venv "$venv" || { echo "afdcd-bench: could not create a virtual environment (install python3-venv)." >&2; exit 1; }
fi
echo "afdcd-bench: installing dependencies into ${venv#"$root"/}${union:+ (extras: $union)}, $deps versions (first run takes a few minutes)" >&2
target="$root"
[ -n "$union" ] && target="$root[$union]"
"$venv/bin/python" -m pip install -q "${pin[@]}" -e "$target" >"$venv/.install.log" 2>&1 &
pip_pid=$!
started=$SECONDS
# a line every 30 s, so a log or CI shows the install is alive
while kill -0 "$pip_pid" 2>/dev/null; do
  for _ in $(seq 30); do kill -0 "$pip_pid" 2>/dev/null && sleep 1; done
  kill -0 "$pip_pid" 2>/dev/null && echo "afdcd-bench: still installing ($((SECONDS - started)) s)" >&2
done
if ! wait "$pip_pid"; then
  tail -n 20 "$venv/.install.log" >&2
  echo "afdcd-bench: pip install failed; full log in $venv/.install.log" >&2
  [ "$deps" = locked ] && echo "afdcd-bench: constraints.txt holds the versions tested on Python 3.11, x86_64; where they do not install (another Python or platform), AFDCD_DEPS=latest takes the newest releases instead" >&2
  exit 1
fi
echo "$want $union" > "$stamp"
rm -f "$venv"/.afdcd-installed-* 2>/dev/null || true
