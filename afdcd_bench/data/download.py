"""Fetching a dataset's archives: resumable HTTP downloads, checksums, archives taken from a folder.

Nothing is used unverified: a file is an archive of the benchmark only once its checksum matches the
one published for it (each entry names where that checksum comes from). Where no checksum is
published (COCO-Stuff's maps, the SegNet CamVid folder), a first file is on trial: its sha256 is
recorded in `checksums.json` beside the archives only once the dataset built from it passed its
check (`confirm`), and every later file is checked against it; a file on trial that fails to open,
extract, build or check is moved aside and named (`set_aside_failed`), never reused. A download goes to
`<name>.part` and resumes from its size with an HTTP range request; a file whose checksum differs is
moved aside, never deleted, and the error names both files. A verified file gets a `.verified` note
(checksum, size, modification time) so that a rerun does not hash tens of gigabytes again.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


class ChecksumMismatch(DownloadError):
    pass


@dataclass(frozen=True)
class Archive:
    name: str  # the file name
    url: str
    checksum: str  # "md5:<hex>", "sha1:<hex>" or "sha256:<hex>", as published; "" where none is (recorded on first use)
    size: int  # bytes, as published or measured (the space check uses it)
    unpacked: int  # bytes once extracted and converted, roughly (the space check uses it)
    source: str  # where the address and the checksum come from


def file_digest(path: Path, algorithm: str, on_bytes: Callable[[int], None] | None = None) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return h.hexdigest()


def _note(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_verified(path: Path, archive: Archive) -> bool:
    """The file is there and was verified against this checksum (the published or the recorded one),
    unchanged since."""
    note = _note(path)
    if not path.is_file() or not note.is_file():
        return False
    try:
        body = json.loads(note.read_text())
    except ValueError:
        return False
    want = recorded_checksum(path.parent, archive)
    return (want is None or body.get("checksum") == want) and body.get("stamp") == _stamp(path)


def _manifest(folder: Path) -> Path:
    return folder / "checksums.json"


def recorded_checksum(folder: Path, archive: Archive) -> str | None:
    """The checksum to verify against: the published one, else the one recorded once a first file
    passed every check (`confirm`); None: no file has yet."""
    if archive.checksum:
        return archive.checksum
    manifest = _manifest(folder)
    return (json.loads(manifest.read_text()) if manifest.is_file() else {}).get(archive.name)


def on_trial(path: Path, archive: Archive) -> bool:
    """A file verified against nothing yet: its own hash becomes the reference only through `confirm`."""
    return recorded_checksum(path.parent, archive) is None


def confirm(path: Path, archive: Archive, log: Callable[[str], None]) -> None:
    """A file on trial passed every check (extracted, built, the data check): its sha256 is recorded,
    and later files are checked against it."""
    if not on_trial(path, archive):
        return
    manifest = _manifest(path.parent)
    known = json.loads(manifest.read_text()) if manifest.is_file() else {}
    checksum = json.loads(_note(path).read_text())["checksum"]
    known[archive.name] = checksum
    manifest.write_text(json.dumps(known, indent=2))
    log(f"{archive.name}: no checksum is published for it; its {checksum} is recorded in {manifest} now that it built and "
        "checked, and later files are checked against it")


def set_aside_failed(path: Path) -> Path:
    """A file that failed a check after its checksum: moved aside (never deleted) with its note, never reused."""
    aside = path.with_name(f"{path.name}.failed-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    path.rename(aside)
    _note(path).unlink(missing_ok=True)
    return aside


def verify(path: Path, archive: Archive, log: Callable[[str], None] = print) -> Path:
    """Check the file's checksum; on a match write its note, else move it aside and raise. A file with
    nothing to check against yet is noted on trial (its own sha256), until `confirm`."""
    checksum = recorded_checksum(path.parent, archive)
    if checksum is None:
        digest = file_digest(path, "sha256")
        _note(path).write_text(json.dumps({"checksum": f"sha256:{digest}", "stamp": _stamp(path)}))
        log(f"{archive.name}: no checksum is published for it and none is recorded yet: its sha256 {digest} becomes the "
            "reference once the dataset built from it passes its check")
        return path
    algorithm, _, expected = checksum.partition(":")
    got = file_digest(path, algorithm)
    if got != expected.lower():
        aside = path.with_name(f"{path.name}.mismatch-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        path.rename(aside)
        said = f"the published {expected} ({archive.source})" if archive.checksum else f"{expected}, recorded when a first file of that name built and checked"
        raise ChecksumMismatch(f"{archive.name}: {algorithm} {got} is not {said}; "
                               f"the file is kept aside as {aside} and nothing was extracted from it. Download it again "
                               "(rerun), or give the right file with --from DIR")
    _note(path).write_text(json.dumps({"checksum": checksum, "stamp": _stamp(path)}))
    log(f"{archive.name}: {algorithm} verified")
    return path


def _progress(total: int | None, description: str):
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), transient=False)
    return progress, progress.add_task(description, total=total)


def download(url: str, dest: Path, expected_size: int | None = None, show_progress: bool = True,
             log: Callable[[str], None] = print, timeout: float = 60.0) -> Path:
    """url to dest through dest.part, resuming a partial download with a range request (a server that
    answers the whole file instead starts it over)."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and expected_size == have:  # the part is already whole
            part.rename(dest)
            return dest
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: {getattr(exc, 'reason', exc)} (no network? --from DIR takes archives "
                            "downloaded elsewhere)") from None
    with response:
        resumed = have and response.status == 206
        if have and not resumed:
            log(f"{dest.name}: the server sent the whole file; starting over")
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else expected_size
        if resumed:
            log(f"{dest.name}: resuming at {have / 2**20:.1f} MB")
        progress, task = _progress(total, dest.name) if show_progress else (None, None)
        with open(part, "ab" if resumed else "wb") as out:
            if progress is not None:
                progress.start()
                progress.update(task, completed=have)
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    if progress is not None:
                        progress.update(task, advance=len(chunk))
            finally:
                if progress is not None:
                    progress.stop()
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: the connection ended at {part.stat().st_size} of {total} bytes; "
                            f"rerun to resume from {part}")
    part.rename(dest)
    return dest


def fetch(archive: Archive, folder: Path, from_dir: Path | None = None, show_progress: bool = True,
          log: Callable[[str], None] = print) -> Path:
    """The verified archive in folder: already there (verified), copied from from_dir, or downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / archive.name
    if is_verified(dest, archive):
        log(f"{archive.name}: present and verified")
        return dest
    if dest.is_file():
        return verify(dest, archive, log)
    if from_dir is not None:
        given = Path(from_dir) / archive.name
        if not given.is_file():
            raise DownloadError(f"--from {from_dir}: {archive.name} is not there (from {archive.url})")
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(given, tmp)
        os.replace(tmp, dest)
        log(f"{archive.name}: copied from {given}")
    else:
        log(f"{archive.name}: downloading {archive.url} ({archive.size / 2**30:.2f} GB)")
        download(archive.url, dest, archive.size, show_progress, log)
    return verify(dest, archive, log)
