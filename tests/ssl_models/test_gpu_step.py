"""The GPU benchmark's code runs (on CPU here, `--cpu-smoke`), and on a GPU its fast settings train like fp32.

Needs only torch and ssl_models, so `benchmarks/gpu_run.sh` runs this file on a GPU machine without Ray or MLflow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ssl_models
from ssl_models.views import create_views

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_measures_every_setting_and_prints_the_ratio_line(tmp_path):
    out = tmp_path / "gpu_step.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--cpu-smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 16 and not result["skipped"]  # 2 view places x 2 precisions x 2 layouts x 2 compile
    assert all(row["pairs_per_s"] > 0 and row["views_per_s"] == pytest.approx(2 * row["pairs_per_s"]) for row in result["rows"])
    assert all(torch.isfinite(torch.tensor(row["mean_loss"])) for row in result["rows"])
    assert set(result["step_split_ms"]) == {"augmentation", "forward", "backward", "optimizer"}
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"gpu_step pairs_per_s={result['best']['pairs_per_s']:.0f} anchor=4200 ratio={result['ratio']:.2f}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bf16_channels_last_and_compile_give_the_fp32_loss_on_the_gpu():
    torch.manual_seed(0)
    method = ssl_models.create_method("simclr", backbone="resnet18", in_channels=3, image_size=32).cuda()
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8, device="cuda")
    views = create_views("multi_view", image_size=32, num_views=2, seed=0).apply(images)
    assert all(v.is_cuda for v in views.values())  # made on the device
    reference = method(views)["loss"].item()
    fast = method.to(memory_format=torch.channels_last)
    nhwc = {k: v.contiguous(memory_format=torch.channels_last) for k, v in views.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = fast(nhwc)["loss"].item()
        compiled = torch.compile(fast)(nhwc)["loss"].item()
    assert abs(bf16 - reference) < 0.02 * abs(reference)
    assert abs(compiled - bf16) < 0.02 * abs(reference)
