"""The poly schedule against numbers worked out by hand, and the lr the loop actually used."""
import pytest

from afdcd_bench.config import load_recipe
from afdcd_bench.engine import train
from afdcd_bench.engine.schedule import poly_lr

from conftest import TINY, reset_accelerate


@pytest.mark.parametrize("step, floor, want", [
    (0, 0.0, 0.01),
    (50, 0.0, 0.005358867312681466),  # 0.01 * 0.5^0.9; linear decay would give 0.005
    (99, 0.0, 0.00015848931924611134),  # 0.01 * 0.01^0.9
    (100, 0.0, 0.0),
    (50, 1e-4, 0.005405278639554652),  # 1e-4 + (0.01 - 1e-4) * 0.5^0.9
    (99, 1e-4, 0.0002569044260536502),
    (100, 1e-4, 1e-4),
])
def test_poly_with_and_without_a_floor(step, floor, want):
    assert poly_lr(0.01, step, 100, 0.9, floor) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_power_one_is_linear_and_power_two_squares():
    assert poly_lr(1.0, 25, 100, 1.0) == pytest.approx(0.75) and poly_lr(1.0, 25, 100, 2.0) == pytest.approx(0.5625)


@pytest.mark.parametrize("floor, want", [
    (0.0, [0.01, 0.007718895067235705, 0.005358867312681466, 0.0028717458874925874]),
    (0.001, [0.01, 0.007947005560512133, 0.005822980581413319, 0.003584571298743328]),
])
def test_the_loop_updates_step_k_with_the_lr_of_step_k_minus_one(tmp_path, floor, want):
    """Validating after every step, the history records the lr of each step's update, past the first too."""
    cfg = load_recipe("demo/baseline", [*TINY, f"output_dir={tmp_path}", "train.iterations=4", "train.val_interval=1",
                                        "train.checkpoint_interval=4", f"train.lr_floor={floor}"])
    try:
        rec = train(cfg, show_progress=False)
    finally:
        reset_accelerate()
    assert [h["step"] for h in rec["history"]] == [1, 2, 3, 4]
    assert [h["lr"] for h in rec["history"]] == pytest.approx(want, rel=1e-12)
