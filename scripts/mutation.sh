#!/usr/bin/env bash
# Mutation testing (mutmut) of what decides the printed numbers: losses/, metrics.py, the schedule and
# the methods, each against its own fast tests ([tool.mutmut] in pyproject.toml). Slow (tens of
# minutes on 2 cores), not part of CI. Resumes where a stopped run left off; `rm -rf mutants` starts over.
# Prints the score: killed / (mutants - equivalent ones listed in docs/mutation.md).
# Usage: scripts/mutation.sh [mutmut run arguments, e.g. a mutant name pattern]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev,mutation
# one BLAS/OpenMP thread per mutant worker: mutmut runs one worker per core
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/mutmut run --max-children "${MUTATION_WORKERS:-$(nproc)}" "$@" || true
.venv/bin/mutmut export-cicd-stats >/dev/null
exec .venv/bin/python scripts/mutation_score.py
