"""What the methods refuse, and how they are found: every checked option of every registered method
is refused naming its dotted key and accepted at its smallest allowed value; the registry and its
discovery; MasKD's tokens file and CIRKD's memory check, with the figures their messages give."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import afdcd_bench.methods as methods
from afdcd_bench.config import load_recipe
from afdcd_bench.config.schema import ConfigError
from afdcd_bench.methods import METHODS, BuildContext, Component, register
from afdcd_bench.methods._class_queues import queue_bytes

AT_LEAST_ONE = ("pixel_queue", "region_queue", "pixel_contrasts", "region_contrasts", "pixels_per_image", "minibatch_images",
                "num_tokens")
CHOICES = ("intra_batch", "teacher_mode", "pixel_enqueue", "enqueue")  # strings checked at recipe load


def _is_weight(name, value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and ("weight" in name or name.startswith("lambda"))


def _bad_values(options):
    """(field, bad value, what the message must say) for each option a method checks by kind."""
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        if _is_weight(f.name, v):
            yield f.name, -1.0, "must be >= 0"
        elif f.name == "pool":
            yield f.name, -1, "must be >"
        elif f.name in ("temperature", "tau", "lr", "eps", "groups"):
            yield f.name, 0, "must be > 0"
        elif f.name in AT_LEAST_ONE:
            yield f.name, 0, "must be >= 1"
        elif f.name == "mask_ratio":
            yield f.name, 1.0, "must be in [0, 1)"
        elif f.name in CHOICES:
            yield f.name, "bogus", "must be"


def _smallest(options):
    """Every checked option at the smallest value it may take, all at once."""
    out = {}
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        if _is_weight(f.name, v):
            out[f.name] = 0.0
        elif f.name in AT_LEAST_ONE:
            out[f.name] = 1
        elif f.name == "mask_ratio":
            out[f.name] = 0.0
    return dataclasses.replace(options, **out)


@pytest.mark.parametrize("name", sorted(n for n in METHODS if n != "baseline"))
def test_each_checked_option_is_refused_naming_its_key_and_accepted_at_its_smallest(name):
    cfg = load_recipe("demo/kd", ["data.crop_size=[512, 512]"])
    cls = METHODS[name]
    bad = list(_bad_values(cls.Options()))
    assert bad, name
    for key, value, says in bad:
        options = dataclasses.replace(cls.Options(), **{key: value})
        with pytest.raises(ConfigError) as err:
            cls.check_recipe(options, cfg, f"method.{name}")
        message = str(err.value)
        assert message.startswith(f"method.{name}.{key} {says}") and repr(value) in message, (name, key, message)
        if key in CHOICES:  # and it lists what is allowed
            allowed = {"intra_batch": "global or device", "teacher_mode": "eval, train", "pixel_enqueue": "class, released",
                       "enqueue": "after_step, before_loss"}[key]
            assert allowed in message, message
    cls.check_recipe(_smallest(cls.Options()), cfg, f"method.{name}")
    cls.check_recipe(cls.Options(), cfg, f"method.{name}")
    for key in CHOICES:  # every allowed choice is accepted
        if hasattr(cls.Options(), key):
            allowed = {"intra_batch": ["global", "device"], "teacher_mode": ["eval", "train"],
                       "pixel_enqueue": ["class", "released"], "enqueue": ["after_step", "before_loss"]}[key]
            for value in allowed:
                cls.check_recipe(dataclasses.replace(cls.Options(), **{key: value}), cfg, f"method.{name}")


class _Terms(Component):
    def forward(self, student, teacher, labels):
        return {}


def test_register_names_the_class_and_refuses_a_second_one_or_a_plus(monkeypatch):
    monkeypatch.delitem(METHODS, "zz_probe", raising=False)
    try:
        cls = register("zz_probe")(type("Probe", (_Terms,), {"__module__": "probe_a"}))
        assert METHODS["zz_probe"] is cls and cls.name == "zz_probe"
        with pytest.raises(ValueError, match=r"method 'zz_probe' is registered twice \(probe_a, probe_b\)"):
            register("zz_probe")(type("Other", (_Terms,), {"__module__": "probe_b"}))
        assert METHODS["zz_probe"] is cls
    finally:
        METHODS.pop("zz_probe", None)
    with pytest.raises(ValueError, match=r"method name 'a\+b' may not contain '\+' \(it joins methods in recipes\)"):
        register("a+b")(type("Joined", (_Terms,), {}))
    assert "a+b" not in METHODS


def test_discovery_imports_every_method_module_and_no_other(monkeypatch):
    seen = []
    monkeypatch.setattr(methods.importlib, "import_module", seen.append)
    methods._discover()
    folder = Path(methods.__file__).parent
    want = sorted(f"afdcd_bench.methods.{p.stem}" for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem != "base")
    assert sorted(seen) == want
    assert {m.__module__ for m in METHODS.values()} == set(want)  # and each module registers one method


def test_maskd_names_a_missing_tokens_file_and_the_recipe_that_makes_it(tmp_path):
    cls = METHODS["maskd"]
    ctx = BuildContext({"logits": 4}, {"logits": 4}, 4)
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        cls(cls.Options(stage_weights=str(missing), stage_recipe="demo/maskd_tokens"), ctx)
    assert str(err.value) == (f"MasKD's receptive tokens {missing} not found: run the recipe demo/maskd_tokens first "
                              f"(reproduce.sh runs it before the students) or set method.maskd.stage_weights to a tokens "
                              f"file of stage 1")
    with pytest.raises(FileNotFoundError) as err:
        cls(cls.Options(), ctx)
    assert str(err.value) == ("MasKD's receptive tokens (none given) not found: set method.maskd.stage_weights to a tokens "
                              "file of stage 1")
    path = tmp_path / "t.safetensors"
    save_file({"tokens": torch.zeros(3, 6)}, str(path))
    with pytest.raises(ValueError) as err:
        cls(cls.Options(stage_weights=str(path)), ctx)
    assert str(err.value) == f"the tokens in {path} were learnt for 6 classes, this recipe has 4"


def test_cirkd_refuses_queues_over_half_the_free_memory_with_the_figures(monkeypatch):
    cls = METHODS["cirkd"]
    ctx = BuildContext({"head": 8}, {"head": 16}, 4, per_device_batch=2)
    big = cls.Options(pixel_queue=5242880, region_queue=1048576)  # 4 x 6291456 x 16 floats: 1.5 GiB
    assert queue_bytes(4, 5242880, 1048576, 16) == 3 * 2**29
    monkeypatch.setattr("afdcd_bench.methods.cirkd.free_memory_bytes", lambda device: 2**31)
    with pytest.raises(ValueError) as err:
        cls(big, ctx)
    assert str(err.value) == ("the CIRKD queues need 1.50 GiB (4 classes x (5242880 + 1048576) entries x 16 floats) but cpu "
                              "has 2.00 GiB free (at most 50% may go to them): lower method.cirkd.pixel_queue / region_queue")
    small = cls.Options(pixel_queue=40, region_queue=5, pixels_per_image=4)
    need = queue_bytes(4, 40, 5, 16)
    monkeypatch.setattr("afdcd_bench.methods.cirkd.free_memory_bytes", lambda device: 2 * need)  # exactly half: fits
    assert cls(small, ctx).state_bytes() == need
    monkeypatch.setattr("afdcd_bench.methods.cirkd.free_memory_bytes", lambda device: 2 * need - 1)
    with pytest.raises(ValueError, match="CIRKD queues need"):
        cls(small, ctx)
    monkeypatch.setattr("afdcd_bench.methods.cirkd.free_memory_bytes", lambda device: None)  # unknown: not checked
    assert cls(small, ctx).run_state().pixel.shape == (4, 40, 16)


def test_adv_refuses_bad_betas_and_a_crop_too_small_for_its_discriminator_with_the_figures():
    cls = METHODS["adv"]
    cfg = load_recipe("demo/kd", ["data.crop_size=[512, 512]"])
    for betas in ([0.9], [0.9, 1.0], [0.9, 0.99, 0.5], [-0.1, 0.9]):
        with pytest.raises(ConfigError) as err:
            cls.check_recipe(dataclasses.replace(cls.Options(), betas=betas), cfg, "method.adv")
        assert str(err.value) == f"method.adv.betas must be two numbers in [0, 1), got {betas!r}"
    cls.check_recipe(dataclasses.replace(cls.Options(), betas=[0.0, 0.5]), cfg, "method.adv")
    with pytest.raises(ConfigError) as err:
        cls.check_recipe(dataclasses.replace(cls.Options(), spectral_norm="sagan"), cfg, "method.adv")
    assert str(err.value) == "method.adv.spectral_norm must be one of release, torch, got 'sagan'"
    cls.check_recipe(dataclasses.replace(cls.Options(), spectral_norm="torch"), cfg, "method.adv")
    small = load_recipe("demo/kd", ["data.crop_size=[504, 1024]"])
    with pytest.raises(ConfigError) as err:
        cls.check_recipe(cls.Options(), small, "method.adv")
    assert str(err.value) == ("method.adv: the discriminator needs logit maps of at least 64x64 (data.crop_size >= 512 a "
                              "side); data.crop_size [504, 1024] gives 63x128")
    cls.check_recipe(cls.Options(), load_recipe("demo/kd", ["data.crop_size=[505, 505]"]), "method.adv")  # 505/8 rounds up


def test_afdcd_refuses_a_crop_without_one_whole_patch_with_the_map_size():
    cls = METHODS["afdcd"]
    o = cls.Options()  # pool 4, patch 4x4
    with pytest.raises(ConfigError) as err:
        cls.check_recipe(o, load_recipe("demo/kd", ["data.crop_size=[100, 160]"]), "method.afdcd")
    assert str(err.value) == ("data.crop_size [100, 160] gives a 3x5 map after output stride 8 and method.afdcd.pool 4, "
                              "smaller than one method.afdcd.patch [4, 4]: use a larger crop, a smaller pool or a smaller patch")
    cls.check_recipe(o, load_recipe("demo/kd", ["data.crop_size=[121, 121]"]), "method.afdcd")  # 121/8 rounds up to 16
    no_pool = dataclasses.replace(o, pool=0)
    cls.check_recipe(no_pool, load_recipe("demo/kd", ["data.crop_size=[25, 25]"]), "method.afdcd")  # 4x4, not pooled
    with pytest.raises(ConfigError, match=r"gives a 3x3 map after output stride 8 and method\.afdcd\.pool 0"):
        cls.check_recipe(no_pool, load_recipe("demo/kd", ["data.crop_size=[24, 24]"]), "method.afdcd")
    for patch, says in (([4], " must be two sides [height, width], got [4]"), ([4, 0], "[1] must be > 0, got 0")):
        with pytest.raises(ConfigError) as err:
            cls.check_recipe(dataclasses.replace(o, patch=patch), load_recipe("demo/kd", ["data.crop_size=[512, 512]"]),
                             "method.afdcd")
        assert str(err.value) == f"method.afdcd.patch{says}"


def test_cirkd_refuses_more_contrasts_than_a_queue_holds_with_the_counts():
    cls = METHODS["cirkd"]
    cfg = load_recipe("demo/kd", ["data.crop_size=[512, 512]"])  # 11 classes
    o = cls.Options(pixel_contrasts=4096, pixel_queue=372)  # floor(4096 / 11) + 1 = 373 entries of each class
    with pytest.raises(ConfigError) as err:
        cls.check_recipe(o, cfg, "method.cirkd")
    assert str(err.value) == ("method.cirkd.pixel_contrasts=4096 samples 373 entries of each of 11 classes, more than "
                              "method.cirkd.pixel_queue=372")
    cls.check_recipe(dataclasses.replace(o, pixel_queue=373), cfg, "method.cirkd")
    o = cls.Options(region_contrasts=1024, region_queue=93)  # 94 of each class
    with pytest.raises(ConfigError) as err:
        cls.check_recipe(o, cfg, "method.cirkd")
    assert str(err.value) == ("method.cirkd.region_contrasts=1024 samples 94 entries of each of 11 classes, more than "
                              "method.cirkd.region_queue=93")
    with pytest.raises(ConfigError) as err:
        cls.check_recipe(cls.Options(pixels_per_image=17, pixel_queue=16, pixel_contrasts=11), cfg, "method.cirkd")
    assert str(err.value) == "method.cirkd.pixels_per_image must not exceed method.cirkd.pixel_queue"


def test_afdcd_checks_each_side_against_its_own_patch_side():
    cls = METHODS["afdcd"]
    o = dataclasses.replace(cls.Options(), pool=0, patch=[2, 4])
    cls.check_recipe(o, load_recipe("demo/kd", ["data.crop_size=[24, 32]"]), "method.afdcd")  # a 3x4 map: one 2x4 patch
    with pytest.raises(ConfigError, match=r"gives a 4x3 map"):
        cls.check_recipe(o, load_recipe("demo/kd", ["data.crop_size=[32, 24]"]), "method.afdcd")
