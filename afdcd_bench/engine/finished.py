"""A finished run's folder: its record kept beside its weights, its resumable state dropped.

The training state (model, optimiser, the method's own parts) is only needed to continue a run;
once the last step is done it is the largest thing in the folder (141 MB of a demo student's
236, measured) and `final.safetensors` already holds its model. So a finished run writes its record to
`<run>/record.json` and removes `state/` unless `train.keep_state: true`. A rerun of a finished
run then reads that record instead of loading a state (docs/runs.md, "A finished run").
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from .records import RecordError, read_record, write_record
from .run_folder import RunFolderError

RECORD = "record.json"


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The record a finished run left in its folder, or None (never finished, or finished before
    this file existed: such a run resumes from its state, as before)."""
    path = run_dir / RECORD
    if not path.is_file():
        return None
    try:
        return read_record(path)
    except RecordError as exc:
        raise RunFolderError(f"{exc}; rerun with --no-resume to start over in {run_dir} (the old folder is kept aside)") from None


def close_run(accelerator: Accelerator, run_dir: Path, record: dict[str, Any], keep_state: bool) -> None:
    """Write the run's record into its folder, then drop the resumable state unless asked to keep it.
    The record goes first: a kill in between leaves a state a rerun resumes from (zero steps left)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_record(run_dir / RECORD, {k: v for k, v in record.items() if k not in ("record_path", "_path")})
        if not keep_state:
            for name in ("state", "state.old", "state.tmp"):
                shutil.rmtree(run_dir / name, ignore_errors=True)
    accelerator.wait_for_everyone()


def stored_record(record: dict[str, Any]) -> dict[str, Any]:
    """A finished run's record as `train` returns it (without the reader's bookkeeping)."""
    return {k: v for k, v in record.items() if k != "_path"}
