"""The decoded-pixel cache (data/cache.py): items equal to the decoded ones bit for bit, a changed
source never served, readers side by side, an interrupted build continued, a full disk, `required`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from afdcd_bench.data import CacheError, build_dataset, cache_folder
from afdcd_bench.data.cache import DecodedCache, build_cache

ROOT = Path(__file__).resolve().parents[1]


def _tree(root: Path, n: int = 6) -> Path:
    """A Cityscapes-layout tree of n train images of 96x160, photo-like enough to compress."""
    rng = np.random.default_rng(0)
    for i in range(n):
        img = root / "leftImg8bit" / "train" / "aachen" / f"aachen_{i:06d}_000019_leftImg8bit.png"
        lab = root / "gtFine" / "train" / "aachen" / f"aachen_{i:06d}_000019_gtFine_labelIds.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        lab.parent.mkdir(parents=True, exist_ok=True)
        ramp = np.linspace(0, 200, 160, dtype=np.float32)[None, :, None] + rng.normal(0, 12, (96, 160, 3))
        Image.fromarray(np.clip(ramp + 20 * i, 0, 255).astype(np.uint8)).save(img)
        label = np.full((96, 160), 7, np.uint8)
        label[:20] = 23
        label[40 + i:, 60:] = 26
        label[0, :5] = 0  # unlabeled: ignored after mapping
        Image.fromarray(label).save(lab)
    return root


def _train(root, cache, seed=0, **kw):
    return build_dataset("cityscapes", root, "train", train=True, crop_size=(64, 96), seed=seed, cache=cache, **kw)


def _same(a, b):
    return a["name"] == b["name"] and all(torch.equal(a[k], b[k]) for k in ("image", "label", "valid"))


@pytest.fixture
def cached(tmp_path):
    root = _tree(tmp_path / "cityscapes")
    build_cache(_train(root, "off"), cache_folder(root, "cityscapes", "train"), log=lambda s: None)
    return root


def test_cached_items_equal_decoded_ones_over_seeds_epochs_and_workers(cached):
    for seed in (0, 3):
        plain, fast = _train(cached, "off", seed), _train(cached, "auto", seed)
        assert fast.cache is not None and plain.cache is None and "reading decoded pixels from the cache" in fast.cache_note
        for epoch in (0, 1):
            plain.set_epoch(epoch)
            fast.set_epoch(epoch)
            assert all(_same(plain[i], fast[i]) for i in range(len(plain)))
    val_plain = build_dataset("cityscapes", cached, "train", cache="off")
    val_fast = build_dataset("cityscapes", cached, "train")  # auto, the default: every consumer gets it
    assert val_fast.cache is not None and all(_same(val_plain[i], val_fast[i]) for i in range(len(val_plain)))
    for workers in (0, 2):  # several readers of one cache at once
        batches = [list(DataLoader(ds, batch_size=2, num_workers=workers, generator=torch.Generator().manual_seed(1),
                                   shuffle=True)) for ds in (_train(cached, "off"), _train(cached, "auto"))]
        assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]) for a, b in zip(*batches))


def test_another_process_reads_the_cache_while_this_one_does(cached):
    code = ("import sys, torch; from afdcd_bench.data import build_dataset\n"
            "ds = build_dataset('cityscapes', sys.argv[1], 'train', train=True, crop_size=(64, 96), seed=0)\n"
            "assert ds.cache is not None\n"
            "torch.save([ds[i]['image'] for i in range(len(ds))], sys.argv[2])")
    out = cached.parent / "other.pt"
    other = subprocess.Popen([sys.executable, "-c", code, str(cached), str(out)], cwd=ROOT)
    mine = [_train(cached, "auto")[i]["image"] for i in range(6)]
    assert other.wait(timeout=120) == 0
    assert all(torch.equal(a, b) for a, b in zip(mine, torch.load(out)))


def test_a_source_changed_after_caching_is_never_served(cached):
    img = sorted((cached / "leftImg8bit" / "train" / "aachen").glob("*.png"))[2]
    Image.fromarray(np.zeros((96, 160, 3), np.uint8)).save(img)  # replaced: other pixels, another size and time
    ds = _train(cached, "auto")
    assert ds.cache is None and "is stale: 1 source file(s) changed" in ds.cache_note and img.name in ds.cache_note
    assert ds[2]["image"].max() == 0  # the new, black file's pixels
    with pytest.raises(CacheError, match=r"data.cache=required, but the cache at .* is stale"):
        _train(cached, "required")
    build_cache(_train(cached, "off"), cache_folder(cached, "cityscapes", "train"), log=lambda s: None)
    fresh, plain = _train(cached, "required"), _train(cached, "off")
    assert all(_same(fresh[i], plain[i]) for i in range(6))


def test_an_interrupted_build_is_partial_unused_and_continued(tmp_path):
    root = _tree(tmp_path / "cityscapes")
    folder = cache_folder(root, "cityscapes", "train")
    ds = _train(root, "off")
    real, calls = ds.load, []

    def stop_at_the_fourth(index):
        calls.append(index)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(index)

    ds.load = stop_at_the_fourth
    with pytest.raises(KeyboardInterrupt):
        build_cache(ds, folder, log=lambda s: None)
    partial = _train(root, "auto")
    assert partial.cache is None and "is partial (its build was stopped)" in partial.cache_note
    assert not list(folder.glob("*.tmp"))
    calls.clear()
    logs = []
    build_cache(ds, folder, log=logs.append)
    assert calls == [3, 4, 5] and any("3 cached already, 3 to decode" in line for line in logs)  # only what was left
    plain, fast = _train(root, "off"), _train(root, "required")
    assert all(_same(plain[i], fast[i]) for i in range(6))


def test_required_without_a_cache_is_refused_in_one_sentence(tmp_path, capsys):
    from afdcd_bench.cli import main

    root = _tree(tmp_path / "cityscapes")
    with pytest.raises(CacheError, match=r"data.cache=required, but no cache at "):
        _train(root, "required")
    assert main(["train", "cityscapes/deeplabv3_resnet18/baseline", f"data.root={root}", "data.cache=required",
                 "student.pretrained=false", f"output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "data.cache=required, but no cache at" in err and "Traceback" not in err
    with pytest.raises(Exception, match=r"data.cache must be one of auto, off, required"):
        from afdcd_bench.config import load_recipe

        load_recipe("cityscapes/deeplabv3_resnet18/baseline", ["data.cache=always"])


def test_a_cache_elsewhere_by_variable_or_key(tmp_path, monkeypatch):
    root = _tree(tmp_path / "cityscapes", n=2)
    monkeypatch.setenv("AFDCD_DATA_CACHE", str(tmp_path / "local-disk"))
    folder = cache_folder(root, "cityscapes", "train")
    assert folder == tmp_path / "local-disk" / "cityscapes" / "train"
    build_cache(_train(root, "off"), folder, log=lambda s: None)
    assert _train(root, "required").cache is not None
    monkeypatch.delenv("AFDCD_DATA_CACHE")
    assert _train(root, "auto").cache is None
    assert _train(root, "required", cache_dir=tmp_path / "local-disk").cache is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI and this machine run as root)")
def test_a_full_disk_during_the_build_ends_in_one_sentence_with_nothing_half_used(tmp_path, monkeypatch):
    import shutil

    root = _tree(tmp_path / "cityscapes")
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        ds = _train(root, "off")
        with pytest.raises(CacheError, match=r"needs about .* GB more at .*GB are free"):  # said before writing
            build_cache(ds, disk / "cityscapes" / "train", log=lambda s: None)
        assert not list((disk / "cityscapes" / "train").glob("*.npy"))
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10**12))  # the check passed; the disk fills
        with pytest.raises(CacheError, match=r"disk full at .* after \d+ of 6 items: the partial cache is not used"):
            build_cache(ds, disk / "cityscapes" / "train", log=lambda s: None)
        assert not list((disk / "cityscapes" / "train").glob("*.tmp"))
        assert not (disk / "cityscapes" / "train" / "manifest.json").exists()
        found, why = DecodedCache.open(ds, disk / "cityscapes" / "train")
        assert found is None and "partial" in why
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_size_only_says_the_space_from_the_headers_and_writes_nothing(tmp_path, capsys):
    from afdcd_bench.cli import main

    root = _tree(tmp_path / "cityscapes")
    assert main(["data", "cache", "cityscapes", "--root", str(root), "--size-only"]) == 0
    out = capsys.readouterr().out
    h, w = np.asarray(Image.open(_train(root, "off").items[0][0])).shape[:2]
    assert f"cityscapes train: 6 items, a cache of {6 * (h * w * 4 + 256) / 1e9:.2f} GB at" in out
    assert not (root / ".afdcd-cache").exists()
