#!/usr/bin/env bash
# ./reproduce.sh demo [--quick]              the whole chain offline on the embedded benchmark
# ./reproduce.sh BENCHMARK [--seeds N] [--data-root PATH] [--teacher PATH] [--methods M1,M2] [--ablations] [key=value ...]
#     BENCHMARK: cityscapes | voc | camvid | ade20k | coco_stuff_164k
# Installs what it needs into .venv/ on first use. All options: .venv/bin/afdcd-bench reproduce --help
set -euo pipefail
# runs from the caller's directory, so relative --results-dir / --data-root / output_dir= are the
# caller's (docs/runs.md); the defaults are the project's results/ and runs/ wherever it is called from
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit $([ $# -lt 1 ] && echo 2 || echo 0)
fi
(cd "$here" && scripts/bootstrap.sh)
venv=.venv
[ "${AFDCD_DEPS:-}" = latest ] && venv=.venv-latest  # the newest releases (scripts/bootstrap.sh)
exec "$here/$venv/bin/python" -m afdcd_bench reproduce "$@"
