"""Training state on disk: written to a temporary folder, marked complete, then swapped in.

A crash mid-write leaves either the previous state or an unmarked temporary folder, never a
state folder that looks complete but is not.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

MARKER = "COMPLETE"


def state_dir(run_dir: Path) -> Path:
    return run_dir / "state"


def latest_state(run_dir: Path) -> Path | None:
    for cand in (state_dir(run_dir), run_dir / "state.old"):
        if (cand / MARKER).is_file():
            return cand
    return None


def save_training_state(accelerator: Accelerator, run_dir: Path, progress: dict[str, Any]) -> None:
    final = state_dir(run_dir)
    tmp, old = run_dir / "state.tmp", run_dir / "state.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(progress, indent=2))
        (tmp / MARKER).write_text("ok\n")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_training_state(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    accelerator.load_state(str(path))
    return json.loads((path / "progress.json").read_text())
