#!/usr/bin/env bash
# Runs the test suite, installing the project and its dev extra into .venv/ first if needed
# (AFDCD_DEPS=latest: the newest releases of every dependency, in .venv-latest/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
# Two pytest-xdist workers (AFDCD_TEST_WORKERS; 0: none), a test file each at a time (--dist
# loadfile): the tests of one file may share a port (test_distributed's real launches) or a SLURM
# node's slots, so they never overlap. `-n N` or `-p no:xdist` given here replaces this.
workers=(-n "${AFDCD_TEST_WORKERS:-2}" --dist loadfile)
for a in "$@"; do
  case "$a" in -n|-n[0-9]*|--numprocesses*|no:xdist) workers=() ;; esac
done
venv=.venv
[ "${AFDCD_DEPS:-}" = latest ] && venv=.venv-latest  # the newest releases (scripts/bootstrap.sh)
exec "$venv/bin/python" -m pytest "${workers[@]}" "$@"
