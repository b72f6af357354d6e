"""The GPU path's pieces (channels_last, bf16 autocast, torch.compile): same losses as the plain path.

channels_last runs everywhere; bf16 and compile need CUDA and skip cleanly without it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipelines.build import build_method, view_policy
from pipelines.config import build_config
from pipelines.worker import to_channels_last

MANIFEST = {"mode": "L", "channels": 1, "image_size": [28, 28], "classes": [str(i) for i in range(10)]}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _method_and_batch(backbone="tiny_cnn", device="cpu"):
    cfg = build_config({}, [f"method.backbone={backbone}", "data.batch_size=16"])
    torch.manual_seed(0)
    method = build_method(cfg, MANIFEST).to(device)
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    views = view_policy(cfg, MANIFEST, method)({"image": images})
    return method, {k: torch.from_numpy(v).to(device) for k, v in views.items()}


def test_channels_last_gives_the_same_loss_and_gradients():
    method, batch = _method_and_batch()
    nhwc_method = copy.deepcopy(method).to(memory_format=torch.channels_last)
    nhwc_batch = to_channels_last(batch)
    assert nhwc_batch["view_0"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc_batch["view_0"], batch["view_0"])  # same values, other layout

    loss, nhwc_loss = method(batch)["loss"], nhwc_method(nhwc_batch)["loss"]
    torch.testing.assert_close(nhwc_loss, loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    nhwc_loss.backward()
    # Each gradient as a whole, relative to its norm: another memory layout sums in another order, so single
    # near-zero entries can differ by more than an element-wise 1e-4 (seen once in a full suite run, passing
    # alone); a layout bug (a transposed or mis-strided tensor) moves the whole gradient, by O(1).
    for (name, p), q in zip(method.named_parameters(), nhwc_method.parameters(), strict=True):
        relative = float((q.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-12))
        assert relative < 1e-4, f"{name}: gradients differ by {relative:.2e} of their norm"


@needs_cuda
def test_bf16_autocast_and_compile_on_gpu_match_fp32():
    method, batch = _method_and_batch("resnet18", "cuda")
    reference = method(batch)["loss"].item()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = method(batch)["loss"].item()
        compiled = torch.compile(method)(batch)["loss"].item()
    assert abs(bf16 - reference) < 0.05 * abs(reference)
    assert abs(compiled - bf16) < 0.05 * abs(reference)
