"""SLURM job settings of `reproduce --executor slurm`: a YAML under recipes/slurm/ (a cluster's
partition, account, time limit ...), with flags on top."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ..config import recipes_root

KEYS = {"partition": str, "account": str, "qos": str, "constraint": str, "time": int, "cpus_per_task": int, "mem_gb": float,
        "signal_delay_s": int, "max_requeues": int, "additional": dict}


def add_slurm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("slurm executor")
    g.add_argument("--slurm-config", default=None, metavar="NAME|PATH",
                   help="job settings from recipes/slurm/NAME.yaml or a YAML file; the flags below override it")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--time", type=int, default=None, metavar="MINUTES", help="time limit per job (default 1440)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per process (default --threads, or 1)")
    g.add_argument("--mem-gb", type=float, default=None, help="memory per node")
    g.add_argument("--signal-delay", type=int, default=None, metavar="SECONDS",
                   help="SIGUSR1 this long before the time limit: the run saves and the job requeues (default 120)")


def load_slurm_config(name: str) -> dict[str, Any]:
    path = Path(name) if name.endswith((".yaml", ".yml")) else recipes_root() / "slurm" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (recipes_root() / "slurm").glob("*.yaml"))
        raise ValueError(f"--slurm-config {name}: {path} not found; under recipes/slurm: {', '.join(known) or 'none'}")
    body = yaml.safe_load(path.read_text()) or {}
    if not isinstance(body, dict):
        raise ValueError(f"{path}: expected a mapping of job settings")
    unknown = sorted(set(body) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    for key, kind in KEYS.items():
        if key in body and body[key] is not None and not isinstance(body[key], kind if kind is not float else (int, float)):
            raise ValueError(f"{path}: {key} must be {kind.__name__}, got {body[key]!r}")
    return body


def slurm_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = load_slurm_config(args.slurm_config) if args.slurm_config else {}
    flags = {"partition": args.partition, "account": args.account, "qos": args.qos, "time": args.time,
             "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem_gb, "signal_delay_s": args.signal_delay}
    opts.update({k: v for k, v in flags.items() if v is not None})
    return opts
