import pytest
"""scripts/gpu_check.sh end to end on the CPU at tiny shapes, so the first GPU run does not fail on a
typo. It runs tests/test_gpu.py on the CPU too (bf16 training on CPU is checked there)."""
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    res = subprocess.run([str(ROOT / "scripts/gpu_check.sh"), "--cpu", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (path,) = tmp_path.glob("gpu_check-cpu-*.json")
    result = json.loads(path.read_text())
    assert result["tests"]["passed"] and result["tests"]["summary"].startswith("4 passed"), result["tests"]
    assert set(result["steps"]) == {f"cityscapes/deeplabv3_resnet18/{m}" for m in ("baseline", "kd", "afdcd")}
    for r in result["steps"].values():
        assert r["projected_hours_40k"] > 0 and r["steps_per_16_images"] == "2 x 8"
    assert set(result["segformer_steps"]) == {"cityscapes/segformer_mitb4/teacher", "cityscapes/segformer_mitb0/kd"}
    assert all(r["projected_hours_160k"] > 0 and r["peak_memory_mb"] > 0 for r in result["segformer_steps"].values())
    curves = result["bf16_vs_fp32"]
    assert len(curves["fp32"]) == len(curves["bf16"]) == 2 and curves["agree"]
    assert "wrote" in res.stdout and "projected 40k" in res.stdout
