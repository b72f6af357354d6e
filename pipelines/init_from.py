"""``method.init_from``: start pretraining from weights that exist, instead of a random encoder.

The source is a rayssl checkpoint (file or folder), an MLflow run id, ``models:/NAME@ALIAS``, or a
plain state dict of the same architecture (``.pt``/``.pth`` from torch.save, or ``.safetensors``,
e.g. a torchvision ResNet's, with or without its ``fc``). Only the encoder is taken; heads start
fresh. A source whose shapes do not fit fails before Ray starts, in one line naming the first key.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from pipelines import checkpoint, tracking
from pipelines.config import Config, ConfigError
from pipelines.data import DataError
from ssl_models.backbones import TorchvisionResNet


def encoder_weights(path: Path) -> dict[str, torch.Tensor]:
    """Encoder weights from a rayssl checkpoint (file or folder) or a plain state dict (keys as the file has them)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    path = checkpoint.file_in(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  one line naming the file
        raise DataError(f"method.init_from {path}: not a readable state dict ({type(err).__name__})") from None
    if isinstance(state, dict) and {"model", "config", "manifest"} <= set(state):  # a rayssl checkpoint
        return {k.removeprefix("encoder."): v for k, v in state["model"].items() if k.startswith("encoder.")}
    if isinstance(state, dict) and "state_dict" in state:  # common training-script wrapper
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"method.init_from {path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_encoder_weights(encoder: nn.Module, path: Path, source: str | None = None) -> None:
    """Load ``path``'s weights into ``encoder``; every key and shape must fit (a classifier ``fc`` is dropped)."""
    weights = {k: v for k, v in encoder_weights(path).items() if not k.startswith(("fc.", "net.fc."))}
    own = encoder.state_dict()
    if isinstance(encoder, TorchvisionResNet) and not any(k.startswith("net.") for k in weights):
        weights = {f"net.{k}": v for k, v in weights.items()}  # a plain torchvision ResNet's keys
    name = source or str(path)
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ConfigError(
            f"method.init_from {name}: its keys do not fit the {type(encoder).__name__} encoder ({detail}, "
            f"{len(missing)} missing, {len(unexpected)} unexpected); give weights of the same backbone"
        )
    for key, value in weights.items():
        if value.shape != own[key].shape:
            raise ConfigError(
                f"method.init_from {name}: {key} has shape {tuple(value.shape)}, the encoder needs {tuple(own[key].shape)}; "
                "check the backbone, the image channels and the stem (CIFAR stem at 64 px and below)"
            )
    encoder.load_state_dict(weights)


def init_encoder(encoder: nn.Module, cfg: Config) -> None:
    """Load ``cfg.method.init_from`` into ``encoder`` (downloading a run's or a registered model's checkpoint)."""
    source = cfg.method.init_from
    if not checkpoint.is_remote_checkpoint(source):
        load_encoder_weights(encoder, Path(source), source)
        return
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.tracking.runs_dir)
    with tempfile.TemporaryDirectory() as tmp:
        load_encoder_weights(encoder, checkpoint.local_copy(uri, source, tmp), source)


def check_init_from(cfg: Config, method: nn.Module) -> None:
    """Before Ray starts: the source exists and fits the encoder (``config.resolve`` made a local path absolute)."""
    source = cfg.method.init_from
    if source is None:
        return
    if not checkpoint.is_remote_checkpoint(source):
        if not Path(source).expanduser().exists():
            raise ConfigError(f"method.init_from {source}: no such file or folder")
    init_encoder(method.encoder, cfg)
