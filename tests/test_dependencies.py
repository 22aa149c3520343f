"""The environment the suite runs in is the one constraints.txt names (scripts/bootstrap.sh), unless
it was asked for the newest releases (AFDCD_DEPS=latest): a lock that is not applied shows here."""
import os
import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert m, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_the_suite_runs_on_the_locked_versions():
    pins = _pins()
    assert {"torch", "accelerate", "timm", "deepspeed", "datasets", "pytest"} <= pins.keys()
    if os.environ.get("AFDCD_DEPS") == "latest":
        return  # the newest releases on purpose: what they are is the point of that run
    installed = {}
    for name in pins:  # the distribution import finds first (setuptools puts vendored copies on the path too)
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass  # a package of another platform (the CUDA libraries on a machine without them)
    off = {name: (want, installed[name]) for name, want in pins.items() if name in installed and installed[name] != want}
    assert not off, f"installed versions differ from constraints.txt (locked, installed): {off}; run scripts/bootstrap.sh dev"
