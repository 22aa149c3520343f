"""scripts/bootstrap.sh decides when to install, with a stand-in interpreter that logs what it is asked."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip $*" >> "$(dirname "$0")/../calls.log"; exit 0; fi
if [ "$1" = "-c" ]; then exit "$(cat "$(dirname "$0")/../import-rc")"; fi
exit 0
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/bootstrap.sh", tmp_path / "scripts/bootstrap.sh")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "constraints.txt").write_text("torch==2.14.1\n")
    for venv in (".venv", ".venv-latest"):
        bin_dir = tmp_path / venv / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python").write_text(FAKE_PYTHON)
        (bin_dir / "python").chmod(0o755)
        (tmp_path / venv / "import-rc").write_text("0")
    return tmp_path


def _run(project, *extras, deps=None):
    env = {k: v for k, v in os.environ.items() if k != "AFDCD_DEPS"} | ({"AFDCD_DEPS": deps} if deps else {})
    res = subprocess.run(["bash", str(project / "scripts/bootstrap.sh"), *extras], capture_output=True, text=True, timeout=60,
                         env=env)
    assert res.returncode == 0, res.stderr
    log = project / (".venv-latest" if deps == "latest" else ".venv") / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_extras_already_installed_do_not_reinstall(project):
    assert len(_run(project, "dev")) == 1
    assert _run(project) == []  # no extras: covered by the dev install
    assert _run(project, "dev") == []
    calls = _run(project, "cityscapes")  # a new extra: installs the union, so dev stays
    assert len(calls) == 1 and calls[0].endswith(f"{project}[cityscapes,dev]")
    assert _run(project, "dev") == []


def test_an_install_that_resolves_elsewhere_is_reinstalled(project):
    _run(project, "dev")
    (project / ".venv/import-rc").write_text("1")  # afdcd_bench not importable from outside the tree
    assert len(_run(project, "dev")) == 1


def test_the_tested_versions_by_default_the_newest_on_request(project):
    locked = _run(project, "dev")
    assert len(locked) == 1 and f"-c {project}/constraints.txt" in locked[0] and "--upgrade" not in locked[0]
    (project / "constraints.txt").write_text("torch==2.14.1\ntimm==1.0.31\n")  # a new lock: installed again
    assert len(_run(project, "dev")) == 1
    latest = _run(project, "dev", deps="latest")  # its own environment, the locked one untouched
    assert len(latest) == 1 and "constraints.txt" not in latest[0] and "--upgrade" in latest[0]
    assert _run(project, "dev", deps="latest") == [] and _run(project, "dev") == []


def test_an_unknown_dependency_mode_is_refused(project):
    res = subprocess.run(["bash", str(project / "scripts/bootstrap.sh")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "AFDCD_DEPS": "newest"})
    assert res.returncode == 2 and "AFDCD_DEPS=newest: use locked" in res.stderr
