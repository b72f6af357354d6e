"""`method.init_from`: continued pretraining from a rayssl checkpoint, a torchvision state dict or safetensors,
checked before Ray starts; and a real run that starts from the given weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pipelines.build import build_method
from pipelines.checkpoint import load as load_checkpoint
from pipelines.config import ConfigError, build_config
from pipelines.data import read_manifest
from pipelines.export import export
from pipelines.init_from import load_encoder_weights
from pipelines.train import validate
from tests.conftest import TINY_RUN
from tests.pipelines.test_export import _checkpoint


def _encoder(shards, backbone, seed=1):
    cfg = build_config({}, [f"data.shards={shards}", f"method.backbone={backbone}"])
    torch.manual_seed(seed)
    return build_method(cfg, read_manifest(str(shards))).encoder


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_from_a_rayssl_checkpoint_and_its_safetensors_export(fmnist_shards, tmp_path):
    ckpt = _checkpoint(tmp_path, fmnist_shards, "tiny_cnn")  # seed 0
    source = build_method(
        build_config({}, [f"data.shards={fmnist_shards}", "method.backbone=tiny_cnn"]), read_manifest(str(fmnist_shards))
    )
    source.load_state_dict(load_checkpoint(ckpt)["model"])
    encoder = _encoder(fmnist_shards, "tiny_cnn")
    assert not _same(encoder, source.encoder)
    load_encoder_weights(encoder, ckpt)
    assert _same(encoder, source.encoder)
    other = _encoder(fmnist_shards, "tiny_cnn")
    load_encoder_weights(other, export(ckpt, "state-dict", tmp_path / "w"))
    assert _same(other, source.encoder)


def test_from_a_plain_torchvision_resnet18_state_dict(fmnist_shards, tmp_path):
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # the CIFAR stem, 1 channel: fits 28 px grey images
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)  # with its fc: dropped
    encoder = _encoder(fmnist_shards, "resnet18")
    load_encoder_weights(encoder, path)
    assert torch.equal(encoder.net.conv1.weight, net.conv1.weight) and torch.equal(
        encoder.net.layer4[1].bn2.bias, net.layer4[1].bn2.bias
    )

    imagenet = tmp_path / "imagenet-stem.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), imagenet)  # 7x7 RGB stem
    with pytest.raises(ConfigError, match=r"method.init_from .*net.conv1.weight has shape \(64, 3, 7, 7\).*\(64, 1, 3, 3\)"):
        load_encoder_weights(_encoder(fmnist_shards, "resnet18"), imagenet)


def test_wrong_or_missing_sources_fail_before_ray(fmnist_shards, tmp_path):
    base = [f"data.shards={fmnist_shards}", "method.backbone=tiny_cnn", f"tracking.runs_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="method.init_from .*nope.pt: no such file"):
        validate(build_config({}, [*base, f"method.init_from={tmp_path / 'nope.pt'}"]))
    small = _checkpoint(tmp_path, fmnist_shards, "small_cnn")  # another backbone's weights
    with pytest.raises(ConfigError, match="method.init_from .*shape"):
        validate(build_config({}, [*base, f"method.init_from={small}"]))
    foreign = tmp_path / "foreign.pt"
    torch.save({"linear.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(ConfigError, match="keys do not fit"):
        validate(build_config({}, [*base, f"method.init_from={foreign}"]))


def test_a_run_starts_from_the_given_weights(ray_session, fmnist_shards, tmp_path):
    from pipelines.train import pretrain

    (tmp_path / "init").mkdir()
    ckpt = _checkpoint(tmp_path / "init", fmnist_shards, "tiny_cnn")
    start = {k.removeprefix("encoder."): v for k, v in load_checkpoint(ckpt)["model"].items() if k.startswith("encoder.")}
    overrides = [s for s in TINY_RUN if not s.startswith("train.epochs")]
    cfg = build_config(
        {},
        [*overrides, f"data.shards={fmnist_shards}", f"tracking.runs_dir={tmp_path / 'runs'}", "train.epochs=1",
         "optim.lr=1e-12", "optim.weight_decay=0", f"method.init_from={ckpt}"],
    )  # fmt: skip
    result = pretrain(cfg)
    from pipelines import tracking

    assert tracking.get_run(result.tracking_uri, result.run_id).data.params["method.init_from"] == str(ckpt)
    end = load_checkpoint(result.checkpoint_dir)["model"]
    # with a learning rate of 1e-12 the convolutions stay where init_from put them (a random init would not match)
    for key, value in start.items():
        if key.endswith("0.weight"):
            torch.testing.assert_close(end[f"encoder.{key}"], value, atol=1e-6, rtol=0)
