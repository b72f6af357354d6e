"""Every config in configs/ loads, runs every registered method through its recipe, and takes one CPU step.

The benchmark configs (CIFAR-10/100, STL-10, ImageNet-100, ImageNet) run on GPUs at full size; here each is
cut down (one worker on CPU, a batch of 8, views of at most 72 px: still above 64, so the ImageNet stem
of the 224 px configs is the one stepped) and takes one optimizer step through the same builders a
worker uses (``build_method``, ``view_policy``, ``build_method_optimizer``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ssl_models
from pipelines import cli
from pipelines.build import build_method, build_method_optimizer, view_policy
from pipelines.config import absolute_paths, load_config, resolve

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
BENCHMARKS = ["cifar10_resnet18", "cifar100_resnet18", "stl10_resnet18", "imagenet100_resnet18", "imagenet_resnet50"]
HEADER_PARTS = ("Recipe:", "Compare with:", "Hardware:")


def test_the_field_s_benchmark_configs_ship_with_a_header_naming_recipe_figures_and_hardware():
    names = {p.stem for p in CONFIGS}
    assert set(BENCHMARKS) <= names
    for name in BENCHMARKS:
        header = "".join(line for line in (CONFIGS[0].parent / f"{name}.yaml").read_text().splitlines(True) if line[:1] == "#")
        missing = [part for part in HEADER_PARTS if part not in header]
        assert not missing, f"{name}.yaml's header lacks {missing}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_config_runs_every_registered_method_through_its_recipe(path):
    cfg = load_config(path)
    assert cfg.method.name in ssl_models.list_methods()
    assert cfg.method.backbone in ssl_models.list_backbones()
    for name in ssl_models.list_methods():
        resolved = resolve(load_config(path, [f"method.name={name}"]))
        assert resolved.optim.name is not None and resolved.optim.lr > 0, name
        assert resolved.data == absolute_paths(cfg).data and resolved.train.epochs == cfg.train.epochs, name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_config_cut_down_takes_one_cpu_step(path):
    full = load_config(path)
    crop = min(full.data.crop_size or 28, 72)
    overrides = ["train.use_gpu=false", "train.num_workers=1", "data.batch_size=8", f"data.crop_size={crop}"]
    cfg = resolve(load_config(path, overrides))
    photos = full.data.crop_size is not None and full.data.crop_size >= 96
    channels = 1 if "fmnist" in path.stem else 3
    manifest = {"channels": channels, "image_size": None if photos else [crop, crop]}
    torch.manual_seed(0)
    method = build_method(cfg, manifest)
    policy = view_policy(cfg, manifest, method)
    optimizer = build_method_optimizer(cfg, method)
    images = torch.randint(0, 256, (8, crop + 8 * photos, crop + 8 * photos, channels), dtype=torch.uint8)
    before = [p.detach().clone() for p in method.encoder.parameters()]
    loss = method(policy.apply(images))["loss"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(a, p.detach()) for a, p in zip(before, method.encoder.parameters(), strict=True))
    assert changed > len(before) // 2, f"{path.stem}: {changed} of {len(before)} encoder tensors changed"


def test_recipe_with_a_config_shows_what_that_run_will_use(capsys):
    assert cli.main(["recipe", "byol", "--config", "configs/imagenet_resnet50.yaml"]) == 0
    out = capsys.readouterr().out
    assert "resolved for 100 epochs on GPUs" in out  # the config's epochs and device, not the defaults
    assert "data.batch_size = 1024 (lr x 4 by linear scaling: 0.24)" in out  # BYOL's 0.06 for 256, scaled to the batch
    assert "train.sync_batchnorm = True" in out  # BYOL's recipe syncs batch norm on GPUs
    assert cli.main(["recipe", "nnclr", "--config", "configs/imagenet_resnet50.yaml"]) == 0
    assert "data.batch_size = 1024 (lr x 2 by square-root scaling: 2.4)" in capsys.readouterr().out  # 1.2 x sqrt(4)
    assert cli.main(["recipe", "byol"]) == 0
    assert "resolved for 10 epochs on CPUs" in capsys.readouterr().out
