import pytest
"""The benchmark scripts run and their values agree (their timings are reported, never asserted)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_losses_runs_and_every_backend_gives_the_reference_value():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_losses.py"), "--shapes", "cpu", "--repeats", "1", "--warmup", "1"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if "speed-up" in ln]
    assert [ln.split()[0] for ln in lines] == ["eager", "compiled"]
    assert all("values identical" in ln for ln in lines), res.stdout


def test_bench_data_runs_on_a_small_generated_tree(tmp_path):
    import json

    out = tmp_path / "data.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_data.py"), "--frames", "4", "--voc-images", "4", "--size", "64",
                          "128", "--epochs", "2", "--repeats", "1", "--workers", "0", "--batch", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in ("cityscapes", "voc"):
        bench = result["benchmarks"][name]
        assert set(bench["ms"]) == {"decode_image", "load_pair", "uncached_item", "cached_item"}
        assert bench["draws"] == 8 and bench["loader_images_per_second"]["0"] > 0
        assert bench["cache_bytes_per_item"] > (4 * 64 * 128 if name == "cityscapes" else 4 * 375 * 500)
    baseline = next(v for k, v in result["cores_needed"].items() if k.startswith("cityscapes/deeplabv3_resnet18/baseline "))
    assert baseline["images_per_second"] > 200 and baseline["cached"] >= 1
    assert "target: cached Cityscapes item / decoding its PNG alone" in res.stdout


def test_bench_step_runs_at_a_tiny_shape(tmp_path):
    import json

    out = tmp_path / "step.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_step.py"), "demo/cirkd", "--batch", "2", "--crop", "32x32",
                          "--warmup", "1", "--steps", "1", "--json", str(out), "student.backbone=resnet10t",
                          "teacher.backbone=resnet10t", "method.cirkd.pixel_queue=400", "method.cirkd.region_queue=100"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["parts_ms"]) == ["transfer", "teacher_forward", "student_forward", "method_losses", "backward",
                                        "optimizer_step"]
    assert result["images_per_second"] > 0 and result["method"] == "cirkd+kd"


@pytest.mark.slow
def test_bench_overhead_runs_at_a_tiny_shape(tmp_path):
    import json

    out = tmp_path / "overhead.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_overhead.py"), "demo/kd", "--steps", "5", "--warmup", "1",
                          "--rounds", "1", "--json", str(out), "data.crop_size=[32, 32]", "student.backbone=resnet10t",
                          "teacher.backbone=resnet10t", "train.effective_batch=2"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["bare_seconds_per_step"] > 0 and result["harness_seconds_per_step"] > 0
