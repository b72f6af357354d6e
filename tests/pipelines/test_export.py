"""`rayssl export`: the encoder leaves rayssl as ONNX, a torch.export program or safetensors weights, and each
gives the same embeddings as rayssl's own model on real Fashion-MNIST images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pipelines.build import build_method
from pipelines.cli import main
from pipelines.config import build_config
from pipelines.data import load_labeled, read_manifest
from pipelines.export import embedding_model_from_checkpoint, export


def _checkpoint(tmp_path, shards, backbone):
    """A checkpoint as pretraining writes it (config, manifest, model weights)."""
    cfg = build_config({}, [f"data.shards={shards}", "method.name=simclr", f"method.backbone={backbone}"])
    manifest = read_manifest(str(shards))
    torch.manual_seed(0)
    method = build_method(cfg, manifest)
    state = {
        "model": method.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "manifest": {k: manifest[k] for k in ("mode", "channels", "image_size", "classes")},
        "epoch": 0,
    }
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def images(fmnist_shards):
    return torch.from_numpy(load_labeled(str(fmnist_shards), "test", 16)[0])  # real uint8 (16, 28, 28, 1)


def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path, fmnist_shards, images):
    import onnxruntime

    ckpt = _checkpoint(tmp_path, fmnist_shards, "tiny_cnn")
    out = export(ckpt, "onnx", tmp_path / "encoder")
    assert out == tmp_path / "encoder.onnx"
    sidecar = json.loads((tmp_path / "encoder.onnx.json").read_text())
    assert sidecar["format"] == "onnx" and sidecar["in_channels"] == 1 and sidecar["image_size"] == [28, 28]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    model, _ = embedding_model_from_checkpoint(ckpt)
    with torch.no_grad():
        want = model(images).numpy()
    assert got.shape == (16, sidecar["num_features"])
    assert np.abs(got - want).max() <= 1e-4


def test_torch_export_program_gives_the_same_embeddings(tmp_path, fmnist_shards, images):
    ckpt = _checkpoint(tmp_path, fmnist_shards, "tiny_cnn")
    out = export(ckpt, "torch-export", tmp_path / "encoder.pt2")
    program = torch.export.load(str(out)).module()
    model, _ = embedding_model_from_checkpoint(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(program(images), model(images))


def test_state_dict_loads_into_plain_torchvision_resnet18(tmp_path, fmnist_shards, images):
    from safetensors.torch import load_file

    ckpt = _checkpoint(tmp_path, fmnist_shards, "resnet18")
    out = export(ckpt, "state-dict", tmp_path / "encoder")
    info = json.loads((tmp_path / "encoder.safetensors.json").read_text())
    assert info["torchvision"]["arch"] == "resnet18" and info["torchvision"]["cifar_stem"]

    # What the README tells a user to do, with torchvision alone:
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(info["in_channels"], 64, 3, stride=1, padding=1, bias=False)  # the CIFAR stem
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    prefix = info["torchvision"]["key_prefix"]
    net.load_state_dict({k.removeprefix(prefix): v for k, v in load_file(str(out)).items()})
    net.eval()
    norm = info["normalization"]
    x = (images.permute(0, 3, 1, 2).float() / 255 - norm["mean"]) / norm["std"]
    model, _ = embedding_model_from_checkpoint(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(images), rtol=1e-4, atol=1e-5)


def test_export_cli(tmp_path, fmnist_shards, capsys):
    ckpt = _checkpoint(tmp_path, fmnist_shards, "tiny_cnn")
    assert main(["export", str(ckpt), "--format", "state-dict", "--out", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w.safetensors").is_file() and "w.safetensors.json" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert "no rayssl checkpoint here" in capsys.readouterr().err


def test_truncated_or_foreign_files_fail_in_one_line_naming_them(tmp_path, fmnist_shards, capsys):
    ckpt = _checkpoint(tmp_path, fmnist_shards, "tiny_cnn")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    foreign = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    for path in (truncated, foreign, text):
        assert main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"rayssl: error: {path}:") and "checkpoint" in err[0]
