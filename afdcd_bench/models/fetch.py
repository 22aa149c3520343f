"""`afdcd-bench weights fetch`: the authors' released files from nothing, into `weights/`.

The Af-DCD README (OSVAI/Af-DCD at 5b086a7, lines 37, 52-109) links every file on Google Drive: the
deep-stem ImageNet backbones every recipe starts from, one DeepLabV3-R101 teacher per benchmark and
Af-DCD's trained students. They are fetched with gdown (Google Drive's well-kept client: resume, a
progress bar), imported strictly (`import_released`: every tensor by name and shape), and recorded
in `weights/manifest.json` (sha256 and size of the file as downloaded). The releases publish no
checksums, so the first download's hash is the reference: a later file of another hash is refused
unless `--accept-changed` says to take it. A file already imported from the recorded hash is never
fetched again; `--from DIR` takes the files from a folder (offline clusters), checked the same way.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .weights import sha256_file

README = "OSVAI/Af-DCD README at 5b086a7"


class FetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Released:
    key: str  # what the command line names: r18, cityscapes-teacher, cityscapes-afdcd-r18
    kind: str  # backbone | teacher | student
    file: str  # the name the raw file is saved (and looked for with --from) under
    drive_id: str
    dst: str  # the imported file, relative to weights/
    backbone: str  # our backbone name
    arch: str | None  # deeplabv3 | pspnet for a segmentation network
    benchmark: str | None
    published: float | None  # the mIoU the README gives it
    source: str  # the README line that links it
    note: str = ""
    mirror: str = ""  # another address of the same file (the tests' loopback server); default: Google Drive
    address: str = ""  # a plain URL where the release is not on Google Drive (CIRKDv2's GitHub release assets)
    recipe: str = ""  # the recipe it was trained by, where not the benchmark's Af-DCD one (harness/released_scores.py)

    @property
    def url(self) -> str:
        return self.mirror or self.address or f"https://drive.google.com/uc?id={self.drive_id}"


def _teacher(bench: str, drive_id: str, miou: float, line: int) -> Released:
    return Released(f"{bench}-teacher", "teacher", f"{bench}_deeplabv3_resnet101.pth", drive_id,
                    f"teachers/{bench}_deeplabv3_resnet101_deepstem.safetensors", "resnet101_deepstem", "deeplabv3", bench, miou,
                    f"{README}, line {line}")


def _student(bench: str, net: str, arch: str, backbone: str, drive_id: str, miou: float, line: int, note: str = "") -> Released:
    return Released(f"{bench}-afdcd-{net}", "student", f"{bench}_afdcd_{arch}_{net}.pth", drive_id,
                    f"released/{bench}_afdcd_{arch}_{backbone}.safetensors", backbone, arch, bench, miou, f"{README}, line {line}", note)


CIRKD = "winycg/CIRKD README at dab64db"
ASSETS = "https://github.com/winycg/CIRKD/releases/download"


def _cirkd(key: str, kind: str, file: str, dst: str, backbone: str, arch: str | None, bench: str | None, miou: float | None,
           line: int, folder: str, recipe: str = "") -> Released:
    """A CIRKDv2 release asset (a plain URL; its published Cityscapes numbers are test-server ones)."""
    return Released(key, kind, file, "", dst, backbone, arch, bench, miou, f"{CIRKD}, line {line}", address=f"{ASSETS}/{folder}/{file}",
                    recipe=recipe)


def _cirkdv2_student(bench: str, net: str, file_net: str, arch: str, backbone: str, folder: str, miou: float, line: int) -> Released:
    """A CIRKDv2 student checkpoint (the backbone under `pretrained.` in the release's layouts, the heads'
    names as ours; DeepLabV3-R18's head 512 wide; SegFormer: NVlabs' layout)."""
    return _cirkd(f"{bench}-cirkdv2-{net}", "student", f"kd_{file_net}_{'citys' if bench == 'cityscapes' else bench}_best_model.pth",
                  f"released/{bench}_cirkdv2_{arch}_{backbone}.safetensors", backbone, arch, bench, miou, line, "segv0.1",
                  recipe=f"{bench}/{folder}/cirkdv2")


SAME_LINK = "the README links one file for two rows (the other: {other}); which network it holds shows on import"
RELEASED: tuple[Released, ...] = (
    Released("r101", "backbone", "resnet101-imagenet.pth", "1V8-E4wm2VMsfnNiczSIDoSM7JJBMARkP",
             "resnet101_deepstem.safetensors", "resnet101_deepstem", None, None, None, f"{README}, line 37"),
    Released("r18", "backbone", "resnet18-imagenet.pth", "1_i0n3ZePtQuh66uQIftiSwN7QAUlFb8_",
             "resnet18_deepstem.safetensors", "resnet18_deepstem", None, None, None, f"{README}, line 37"),
    Released("mbv2", "backbone", "mobilenetv2-imagenet.pth", "12EDZjDSCuIpxPv-dkk1vrxA7ka0b0Yjv",
             "mobilenetv2_100.safetensors", "mobilenetv2_100", None, None, None, f"{README}, line 37"),
    _teacher("cityscapes", "1zUdhYPYCDCclWU3Wo7GbbTlM8ibQ_UC1", 78.07, 52),
    _teacher("ade20k", "1jlywjvZqKTUWCEwdFpPKHzrpNgeckMcO", 42.70, 68),
    _teacher("coco_stuff_164k", "1uOCl8ZYK22d7D1WXG4tnHc6slT8_iSjk", 38.71, 77),
    _teacher("voc", "1rYTaVq_ooiAI4oFOcDP8K3SpSbjURGnX", 77.67, 86),
    _teacher("camvid", "1BK8Flukoz-Mtd0e1iwFG5rLxi_ES76d2", 69.84, 100),
    _student("cityscapes", "r18", "deeplabv3", "resnet18_deepstem", "1D1pREhqYdu_NJzQSo1utNNsrjn_EJSlO", 77.03, 63,
             SAME_LINK.format(other="cityscapes-afdcd-mbv2")),
    _student("cityscapes", "mbv2", "deeplabv3", "mobilenetv2_100", "1D1pREhqYdu_NJzQSo1utNNsrjn_EJSlO", 76.43, 57,
             SAME_LINK.format(other="cityscapes-afdcd-r18")),
    _student("ade20k", "r18", "deeplabv3", "resnet18_deepstem", "1jJrZuHDJJB8E2Vw0QW6687fjcspMytXO", 36.21, 70),
    _student("coco_stuff_164k", "r18", "deeplabv3", "resnet18_deepstem", "1MnKWYpwDkY7IkyNMkY4SbsWmRFP8P5lM", 34.02, 79),
    _student("voc", "r18", "deeplabv3", "resnet18_deepstem", "1nRJTW-WbjmlE5iZKb9cyq4sII-aM4-qc", 76.25, 90),
    _student("voc", "psp18", "pspnet", "resnet18_deepstem", "1PcU9SSAWlwsaIcsH8eZFYZOkejEjDhR1", 76.14, 95,
             SAME_LINK.format(other="camvid-afdcd-psp18")),
    _student("camvid", "r18", "deeplabv3", "resnet18_deepstem", "1-cUEZorAzRTcbCWSW2o3PECdxs84c5Ay", 69.27, 104),
    _student("camvid", "psp18", "pspnet", "resnet18_deepstem", "1PcU9SSAWlwsaIcsH8eZFYZOkejEjDhR1", 69.48, 109,
             SAME_LINK.format(other="voc-afdcd-psp18")),
    _cirkd("mbv3_small", "backbone", "mobilenet_v3_small-47085aa1.pth", "mobilenetv3_small_100.safetensors",
           "mobilenetv3_small_100", None, None, None, 27, "backbonev0.1"),
    _cirkd("mbv3_large", "backbone", "mobilenet_v3_large-bc2c3fd3.pth", "mobilenetv3_large_100.safetensors",
           "mobilenetv3_large_100", None, None, None, 28, "backbonev0.1"),
    _cirkd("mobilevit_xxs", "backbone", "mobilevit-xxsmall_3rdparty_in1k_20221018-77835605.pth", "mobilevit_xxs.safetensors",
           "mobilevit_xxs", None, None, None, 29, "backbonev0.1"),
    _cirkd("mit_b0", "backbone", "mit_b0.pth", "mit_b0.safetensors", "mit_b0", None, None, None, 30, "backbonev0.1"),
    _cirkd("mit_b4", "backbone", "mit_b4.pth", "mit_b4.safetensors", "mit_b4", None, None, None, 31, "backbonev0.1"),
    _cirkd("cityscapes-segformer-teacher", "teacher", "segformer_MiT_B4_citys_best_model.pth",
           "teachers/cityscapes_segformer_mit_b4.safetensors", "mit_b4", "segformer", "cityscapes", 80.38, 66, "segv0.1"),
    _cirkdv2_student("cityscapes", "r18", "deeplabv3_resnet18", "deeplabv3", "resnet18_deepstem", "deeplabv3_resnet18_2025", 75.60, 52),
    _cirkdv2_student("ade20k", "r18", "deeplabv3_resnet18", "deeplabv3", "resnet18_deepstem", "deeplabv3_resnet18_2025", 39.82, 78),
    _cirkdv2_student("coco_stuff_164k", "r18", "deeplabv3_resnet18", "deeplabv3", "resnet18_deepstem", "deeplabv3_resnet18_2025",
                     34.42, 106),
    _cirkdv2_student("cityscapes", "segformer_b0", "segformer_MiT_B4_segformer_MiT_B0", "segformer", "mit_b0", "segformer_mitb0",
                     75.52, 68),
    *(_cirkdv2_student(bench, net, file_net, arch, backbone, folder, miou, line) for bench, net, file_net, arch, backbone, folder, miou, line in (
        ("cityscapes", "upernet18", "upernet_lite_resnet18", "upernet", "resnet18_deepstem", "upernet_resnet18", 72.11, 54),
        ("ade20k", "upernet18", "upernet_lite_resnet18", "upernet", "resnet18_deepstem", "upernet_resnet18", 36.87, 80),
        ("cityscapes", "mbv3s", "deeplabv3_mobilenet_ssseg_mobilenetv3_small", "deeplabv3", "mobilenetv3_small_100",
         "deeplabv3_mobilenetv3_small", 67.62, 56),
        ("voc", "mbv3s", "deeplabv3_mobilenet_ssseg_mobilenetv3_small", "deeplabv3", "mobilenetv3_small_100",
         "deeplabv3_mobilenetv3_small", 64.67, 92),
        ("coco_stuff_164k", "mbv3s", "deeplabv3_mobilenet_ssseg_mobilenetv3_small", "deeplabv3", "mobilenetv3_small_100",
         "deeplabv3_mobilenetv3_small", 27.66, 110),
        ("ade20k", "mbv3l", "deeplabv3_mobilenet_ssseg_mobilenetv3_large", "deeplabv3", "mobilenetv3_large_100",
         "deeplabv3_mobilenetv3_large", 36.14, 82),
        ("voc", "mbv3l", "deeplabv3_mobilenet_ssseg_mobilenetv3_large", "deeplabv3", "mobilenetv3_large_100",
         "deeplabv3_mobilenetv3_large", 71.90, 94),
        ("coco_stuff_164k", "mbv3l", "deeplabv3_mobilenet_ssseg_mobilenetv3_large", "deeplabv3", "mobilenetv3_large_100",
         "deeplabv3_mobilenetv3_large", 32.14, 112),
        ("cityscapes", "psp_mbv3s", "psp_mobile_mobilenetv3_small", "pspnet", "mobilenetv3_small_100", "pspnet_mobilenetv3_small", 65.42, 58),
        ("voc", "psp_mbv3s", "psp_mobile_mobilenetv3_small", "pspnet", "mobilenetv3_small_100", "pspnet_mobilenetv3_small", 63.84, 96),
        ("coco_stuff_164k", "psp_mbv3s", "psp_mobile_mobilenetv3_small", "pspnet", "mobilenetv3_small_100", "pspnet_mobilenetv3_small",
         28.28, 108),
        ("ade20k", "psp_mbv3l", "psp_mobile_mobilenetv3_large", "pspnet", "mobilenetv3_large_100", "pspnet_mobilenetv3_large", 36.01, 84),
        ("voc", "psp_mbv3l", "psp_mobile_mobilenetv3_large", "pspnet", "mobilenetv3_large_100", "pspnet_mobilenetv3_large", 71.55, 98),
        ("cityscapes", "mvit", "deeplab_mobile_mobilevit_xx_small", "deeplabv3", "mobilevit_xxs", "deeplabv3_mobilevit_xxs", 68.91, 60),
        ("cityscapes", "psp_mvit", "psp_mobile_mobilevit_xx_small", "pspnet", "mobilevit_xxs", "pspnet_mobilevit_xxs", 68.45, 62),
    )),
)
BY_KEY = {r.key: r for r in RELEASED}


def weights_root() -> Path:
    from ..config import project_root

    return Path(os.environ.get("AFDCD_WEIGHTS", project_root() / "weights"))


def select(backbones: bool, teachers: list[str], released: list[str]) -> list[Released]:
    """The backbones (when asked, or when nothing else is), the teachers and Af-DCD students of the
    named benchmarks ("all" for every one)."""
    benches = {r.benchmark for r in RELEASED if r.benchmark}
    for name in [*teachers, *released]:
        if name != "all" and name not in benches:
            raise FetchError(f"no released files for {name!r}; benchmarks with some: {', '.join(sorted(benches))}")
    out = [r for r in RELEASED if r.kind == "backbone"] if backbones or not (teachers or released) else []
    out += [r for r in RELEASED if r.kind == "teacher" and ("all" in teachers or r.benchmark in teachers)]
    out += [r for r in RELEASED if r.kind == "student" and ("all" in released or r.benchmark in released)]
    return out


def _manifest(root: Path) -> dict[str, dict]:
    path = root / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_manifest(root: Path, body: dict[str, dict]) -> None:
    from ..files import atomic_write

    atomic_write(root / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(body, indent=2, sort_keys=True)))


def _imported_from(dst: Path) -> str | None:
    """The sha256 of the raw file an imported weights file was made from (its metadata beside it)."""
    from .checkpoint import read_meta

    try:
        return read_meta(dst).get("source_sha256")
    except (FileNotFoundError, ValueError):
        return None


def _download(entry: Released, raw: Path, show_progress: bool) -> None:
    import gdown

    raw.parent.mkdir(parents=True, exist_ok=True)
    try:
        got = gdown.download(url=entry.url, output=str(raw), quiet=not show_progress, resume=True)
    except Exception as exc:  # gdown raises its own and requests' errors
        raise FetchError(f"{entry.key}: downloading {entry.url} failed: {exc} (rerun to resume; or download it by hand "
                         f"from the README's link, save it as {entry.file} and give --from DIR)") from None
    if not got or not raw.is_file():
        raise FetchError(f"{entry.key}: gdown fetched nothing from {entry.url}")


def fetch_one(entry: Released, root: Path, from_dir: Path | None, accept_changed: bool, show_progress: bool,
              log: Callable[[str], None]) -> Path:
    """The imported file of one released entry, fetched and checked as the module says."""
    from .released import import_released

    manifest = _manifest(root)
    recorded = manifest.get(entry.file)
    dst = root / entry.dst
    if recorded and dst.is_file() and _imported_from(dst) == recorded["sha256"]:
        log(f"{entry.key}: {dst} is there, imported from the recorded file")
        return dst
    raw = root / "downloads" / entry.file
    if from_dir is not None:
        given = Path(from_dir) / entry.file
        if not given.is_file():
            raise FetchError(f"--from {from_dir}: {entry.file} is not there (the README's link: "
                             f"https://drive.google.com/file/d/{entry.drive_id}/view)")
        raw.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(given, raw)
    elif not raw.is_file():
        log(f"{entry.key}: downloading {entry.file} from {entry.url} ({entry.source})")
        _download(entry, raw, show_progress)
    digest, size = sha256_file(raw), raw.stat().st_size
    if recorded and recorded["sha256"] != digest:
        if not accept_changed:
            aside = raw.with_name(f"{raw.name}.changed-{datetime.datetime.now():%Y%m%d-%H%M%S}")
            raw.rename(aside)
            raise FetchError(f"{entry.key}: {entry.file} has sha256 {digest}, not the {recorded['sha256']} recorded when it was "
                             f"first fetched ({recorded['fetched_at']}): kept aside as {aside}. The release may have "
                             "changed; --accept-changed takes the new file (and records it)")
        log(f"{entry.key}: taking a file other than the one first recorded (--accept-changed)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = import_released(raw, dst, backbone=entry.backbone, arch=entry.arch)
    except Exception as exc:  # strict import refused it (wrong tensors, truncated, not a checkpoint, a pickle with code)
        aside = raw.with_name(f"{raw.name}.failed-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        raw.rename(aside)
        raise FetchError(f"{entry.key}: {entry.file} (sha256 {digest}) did not import: {exc}; it was moved aside "
                         f"as {aside} and not recorded as the release's file: give the right file (--from DIR) or rerun "
                         "to download it again") from None
    if not recorded or recorded["sha256"] != digest:
        manifest[entry.file] = {"sha256": digest, "size": size, "url": entry.url, "source": entry.source,
                                "fetched_at": datetime.datetime.now().isoformat(timespec="seconds")}
        log(f"{entry.key}: the release publishes no checksum; sha256 {digest} ({size} bytes) recorded in "
            f"{root / 'manifest.json'} now that it imported, and later files are checked against it")
    manifest[entry.file]["imported"] = {"path": entry.dst, "sha256": sha256_file(dst)}  # what a run reading dst checks
    _write_manifest(root, manifest)
    what = f"{report.build_args.get('arch', '')}-{report.backbone}".lstrip("-")
    log(f"{entry.key}: imported {what} into {dst} ({report.tensors} tensors){'; ' + entry.note if entry.note else ''}")
    return dst


def recorded_import(path: Path, root: Path | None = None) -> tuple[str, Path] | None:
    """The sha256 weights/manifest.json holds for an imported file at `path`, and the manifest's path."""
    root = Path(root) if root else weights_root()
    try:
        rel = Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    for body in _manifest(root).values():
        imported = body.get("imported") or {}
        if imported.get("path") == rel:
            return imported["sha256"], root / "manifest.json"
    return None


def fetch(entries: list[Released], root: Path | None = None, from_dir: Path | None = None, accept_changed: bool = False,
          show_progress: bool = True, log: Callable[[str], None] = print) -> list[Path]:
    root = Path(root) if root else weights_root()
    return [fetch_one(e, root, from_dir, accept_changed, show_progress, log) for e in entries]


def missing_weights_hint(path: str | os.PathLike) -> str | None:
    """The `weights fetch` command that gets a recipe's missing weights file, where one does."""
    p = Path(path)
    for entry in RELEASED:
        if p.as_posix().endswith(entry.dst):
            flag = {"backbone": "", "teacher": f" --teachers {entry.benchmark}", "student": f" --released {entry.benchmark}"}[entry.kind]
            return (f"`afdcd-bench weights fetch{flag}` downloads and imports it ({entry.source}); offline: "
                    f"`afdcd-bench weights fetch{flag} --from DIR` with {entry.file} in DIR")
    return None
