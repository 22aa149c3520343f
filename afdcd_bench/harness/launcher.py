"""`afdcd-bench launch`: `accelerate launch ... -m afdcd_bench train ...` with its output kept and
a failure said in one sentence (docs/distributed.md, "Launching").

Under a bare `accelerate launch` the run's own sentence ("teacher checkpoint ... not found") sits
between accelerate's defaults warning and the launcher's CalledProcessError traceback, or above torch's
ChildFailedError report, once per process. Here the launcher runs as a child whose whole output
goes to a log beside the run folder; the terminal gets the run's lines as they come, without the
launcher's own blocks, and a failure ends with the log's path and then the sentence, last and once.
The launcher's output is read as text, so what is recognised of it is named here, each with the
lines it matches; anything not recognised is shown.
"""
from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable

WARNING_START = "The following values were not passed to `accelerate launch`"
WARNING_END = "To avoid this warning pass in values"
# torch.distributed.elastic's log lines: "E1130 22:34:27.638000 4561 torch/distributed/elastic/..."
ELASTIC_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ \d+ \S*torch/")
LAUNCHER_ERRORS = ("subprocess.CalledProcessError: Command", "torch.distributed.elastic.multiprocessing.errors.ChildFailedError")
SENTENCE = "afdcd-bench: "
RANK_PREFIX = re.compile(r"^\[(?:default)?rank\d+\]:\s?")  # torch elastic's prefix of a worker's lines
# in the launcher's report: "exit status -9" (one process), "exitcode  : -9 (pid: ...)" with "rank      : 1" (several)
EXIT_STATUS = re.compile(r"returned non-zero exit status (-?\d+)")
REPORT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
REPORT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


@dataclass
class LaunchOutput:
    """The terminal's view of the launch: what to show now, what to say at the end."""

    show: IO[str]
    sentences: list[str] = field(default_factory=list)  # the run's own error sentences, each once, in order
    launcher_failed: bool = False  # the launcher's traceback came: nothing after it is the run's
    consequences: int = 0  # tracebacks of other processes after the first sentence (kept in the log)
    exits: list[tuple[int | None, int]] = field(default_factory=list)  # (rank, exit code) from its report
    _warning: bool = False
    _traceback: list[str] = field(default_factory=list)
    _rank: int | None = None

    def line(self, text: str) -> None:
        bare = RANK_PREFIX.sub("", text.rstrip("\n"))
        joined = bare.find(SENTENCE, 1)
        if joined > 0 and not (self._traceback or self.launcher_failed):  # two processes' writes on one line
            self.line(bare[:joined] + "\n")
            self.line(bare[joined:] + "\n")
            return
        if self.launcher_failed:
            self._report(bare)
            return
        if self._traceback:
            self._traceback.append(text)
            if bare and not bare[0].isspace() and not bare.startswith(("Traceback", "During handling", "The above exception")):
                block, self._traceback = self._traceback, []
                if bare.startswith(LAUNCHER_ERRORS):
                    self.launcher_failed = True
                    self._report(bare)
                elif self.sentences:  # another process's end after the run said why it stopped: a consequence
                    self.consequences += 1
                else:
                    self.show.writelines(block)  # the run's own crash: its traceback is the message
            return
        if bare.startswith("Traceback (most recent call last):"):
            self._traceback = [text]
        elif bare.startswith(WARNING_START):
            self._warning = True
        elif self._warning:
            self._warning = not bare.startswith(WARNING_END)
        elif ELASTIC_LOG.match(bare):
            pass
        elif bare.startswith(SENTENCE + "error: ") or bare.startswith(SENTENCE) and "rerun the same command" in bare:
            if bare not in self.sentences:  # every process says it
                self.sentences.append(bare)
        else:
            self.show.write(text)
        self.show.flush()

    def _report(self, bare: str) -> None:
        m = EXIT_STATUS.search(bare)
        if m:
            self.exits.append((None, int(m.group(1))))
        m = REPORT_RANK.match(bare)
        if m:
            self._rank = int(m.group(1))
        m = REPORT_EXIT.match(bare)
        if m:
            self.exits.append((self._rank, int(m.group(1))))

    def finish(self) -> None:
        if self._traceback:  # an unfinished block: show it rather than lose it
            self.show.writelines(self._traceback)
            self._traceback = []


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        why = " (killed from outside: out of memory? `dmesg` says)" if -code == signal.SIGKILL else ""
        return f"was ended by {name}{why}"
    return f"exited with status {code}"


def launch_log(run_dir: Path) -> Path:
    """Beside the run folder, like its lock: `--no-resume` moves the folder, never this log."""
    return run_dir.with_name(run_dir.name + ".launch.log")


def run_launch(accelerate_options: list[str], train_argv: list[str], log: Path, stream: IO[str] | None = None) -> int:
    """Run the launch, its output into `log` (appended) and, filtered, onto `stream`; returns the
    run's exit status (a user error's 2, a stop's 75), not the launcher's 1."""
    show = stream or sys.stderr
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_options, "-m", "afdcd_bench", "train", *train_argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    out = LaunchOutput(show)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(cmd)}\n")
        f.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if "ACCELERATE_USE_CPU" not in env and not _has_cuda():  # several CPU processes synchronise over gloo only so
            env["ACCELERATE_USE_CPU"] = "1"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                                start_new_session=True)
        forward = _forward_signals(proc)
        try:
            for text in _lines(proc.stdout):
                f.write(text)
                f.flush()
                out.line(text)
            code = proc.wait()
        finally:
            for sig, old in forward.items():
                signal.signal(sig, old)
        out.finish()
    if code == 0:
        return 0
    more = len(out.sentences) - 1 + out.consequences if out.sentences else 0
    print(f"afdcd-bench: the launch's whole output{f' (with {more} more message(s) from the other processes)' if more else ''}: "
          f"{log}", file=show)
    if out.sentences:
        print(out.sentences[0], file=show)  # the first process to say why: the others followed it
        root = out.exits[-1][1] if out.exits else 2  # the report names the first failure ("Root Cause") last
        return root if root > 0 else 2
    ended = [(r, c) for r, c in out.exits if c != 0]
    if ended:
        rank, c = ended[-1]
        who = f"process {rank} of the launch" if rank is not None else "the training process"
        print(f"afdcd-bench: error: {who} {describe_exit(c)}; the launcher stopped the others. Rerun the same command to "
              "resume from the last checkpoint", file=show)
        return c if c > 0 else 1
    print(f"afdcd-bench: error: the launch failed with status {code} (its output is above and in the log)", file=show)
    return code


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _lines(pipe: IO[str] | None) -> Iterable[str]:
    assert pipe is not None
    yield from iter(pipe.readline, "")


def _forward_signals(proc: subprocess.Popen) -> dict[int, object]:
    """Ctrl-C and a scheduler's SIGTERM reach every process of the launch (its own session), which
    save and exit; this process keeps reading their output until they have."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        old[sig] = signal.signal(sig, forward)
    return old
