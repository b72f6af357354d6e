"""``rayssl export``: a pretrained encoder out of rayssl, in formats other tools read without rayssl.

Every format holds ``ssl_models.embedding.EmbeddingModel``: uint8 images (N, H, W, C) in, float
embeddings (N, F) out, with the normalization inside.

- ``onnx``: an ONNX graph (dynamic batch), checked against PyTorch with onnxruntime (max abs diff <= 1e-4).
- ``torch-export``: a ``torch.export`` program (``.pt2``), loaded with ``torch.export.load``.
- ``state-dict``: the encoder's weights as safetensors plus a JSON sidecar (architecture, channels,
  image size, normalization), loadable into a plain torchvision ResNet (see the README).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipelines import checkpoint
from pipelines.build import method_from_checkpoint, view_size
from pipelines.data import EVAL_RESIZE_RATIO
from ssl_models.backbones import TorchvisionResNet
from ssl_models.embedding import EmbeddingModel
from ssl_models.views import PIXEL_MEAN, PIXEL_STD

FORMATS = ("onnx", "torch-export", "state-dict")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2", "state-dict": ".safetensors"}
ONNX_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    pass


def embedding_model_from_checkpoint(path: str | Path) -> tuple[EmbeddingModel, dict]:
    """The checkpoint's encoder as an ``EmbeddingModel`` (eval mode), and what the sidecar says about it."""
    state = checkpoint.load(path)
    method, cfg = method_from_checkpoint(state)
    manifest = state["manifest"]
    model = EmbeddingModel(method.encoder).eval()
    size = view_size(cfg, manifest)
    if manifest.get("image_size"):
        preprocess = f"none: images of the shards' size, {size} x {size}"
    else:
        resize = round(size * EVAL_RESIZE_RATIO)
        preprocess = f"resize the shorter side to {resize} px, then centre-crop {size} x {size} (as the probes did)"
    info = {
        "method": cfg.method.name,
        "backbone": cfg.method.backbone,
        "in_channels": manifest["channels"],
        "image_size": [size, size],
        "preprocess": preprocess,
        "num_features": model.num_features,
        "input": "uint8 images (N, H, W, C), pixels 0-255",
        "output": f"float32 embeddings (N, {model.num_features})",
        "normalization": {"x": "pixels / 255", "mean": PIXEL_MEAN, "std": PIXEL_STD, "then": "(x - mean) / std"},
        "classes_seen_by_probes": manifest.get("classes"),
    }
    encoder = method.encoder
    if isinstance(encoder, TorchvisionResNet):
        info["torchvision"] = {
            "arch": cfg.method.backbone,
            "cifar_stem": size <= 64,  # 3x3 stride-1 conv1, no max-pool
            "key_prefix": "net.",
            "fc": "removed (nn.Identity): the embedding is the pooled features",
        }
    return model, info


def example_images(info: dict, batch: int = 2, seed: int = 0) -> torch.Tensor:
    h, w = info["image_size"]
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, h, w, info["in_channels"]), dtype=torch.uint8, generator=gen)


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the checkpoint's encoder in ``fmt`` to ``out`` (a file path; its suffix is added when missing)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    model, info = embedding_model_from_checkpoint(checkpoint)
    out = Path(out)
    if out.suffix != SUFFIX[fmt]:
        out = out.with_name(out.name + SUFFIX[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    example = example_images(info)
    if fmt == "onnx":
        _export_onnx(model, example, out, info)
    elif fmt == "torch-export":
        program = torch.export.export(model, (example,), dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
        torch.export.save(program, str(out))
    else:
        from safetensors.torch import save_file

        weights = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
        save_file(weights, str(out), metadata={"rayssl": json.dumps(info)})
    out.with_name(out.name + ".json").write_text(json.dumps({"format": fmt, **info}, indent=2) + "\n")
    return out


def _export_onnx(model: EmbeddingModel, example: torch.Tensor, out: Path, info: dict) -> None:
    import onnxruntime

    torch.onnx.export(
        model,
        (example,),
        str(out),
        dynamo=True,
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_shapes={"images": {0: "batch"}},
    )
    # Checked as a user would run it: onnxruntime on a batch of another size than the export example.
    check = example_images(info, batch=5, seed=1)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
    with torch.no_grad():
        want = model(check).numpy()
    diff = float(np.abs(got - want).max())
    if diff > ONNX_TOLERANCE:
        raise ExportError(f"{out}: onnxruntime differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE:g}); not usable")
