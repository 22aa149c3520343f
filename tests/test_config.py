import pytest

from afdcd_bench.config import ConfigError, config_hash, load_recipe


def test_demo_recipes_resolve_with_inheritance():
    cfg = load_recipe("demo/afdcd")
    assert cfg.name == "demo/afdcd"
    assert cfg.method.name == "afdcd" and cfg.method.afdcd.pool == 0
    assert cfg.student.backbone == "resnet18" and cfg.teacher.backbone == "resnet34"
    assert cfg.data.crop_size == [64, 64]  # from _base.yaml
    assert cfg.method.clip_grad_norm == 15.0  # paper default from the schema


def test_overrides_and_hash():
    a = load_recipe("demo/afdcd")
    b = load_recipe("demo/afdcd", ["train.lr=0.01", "method.afdcd.patch=[2, 2]"])
    assert b.train.lr == 0.01 and b.method.afdcd.patch == [2, 2]
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(load_recipe("demo/afdcd"))


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lerning_rate=0.1", "train.lerning_rate"),
        ("method.afdcd.grups=4", "method.afdcd.grups"),
        ("train.iterations=ten", "train.iterations"),
        ("eval.flip=yes please", "eval.flip"),
        ("nokey", "dotted.key=value"),
    ],
)
def test_bad_keys_and_values_are_errors_naming_them(override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe("demo/kd", [override])


def test_unknown_recipe(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("demo/nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: bad.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(bad)
