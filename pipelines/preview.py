"""``rayssl preview``: a grid of the views a config's policy makes from a few real images.

So a person can see what an augmentation setting does before paying for a run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.build import view_policy, view_size  # noqa: E402
from pipelines.config import Config  # noqa: E402
from pipelines.crops import crop_batch  # noqa: E402
from pipelines.data import decode_for_probes, read_manifest, read_sample  # noqa: E402
from ssl_models.views import PIXEL_MEAN, PIXEL_STD  # noqa: E402


def _show(ax, chw: torch.Tensor) -> None:
    img = (chw * PIXEL_STD + PIXEL_MEAN).clamp(0, 1).permute(1, 2, 0).numpy()
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
    ax.set_axis_off()


def preview(cfg: Config, out: str | Path, images: int = 6, draws: int = 2, seed: int = 0) -> Path:
    """Rows: images. Columns: the image (as the probes see it), then every view of ``draws`` independent draws.

    Photos that keep their own sizes have each view cropped from the original, as pretraining does.
    """
    manifest = read_manifest(cfg.data.shards)
    policy = view_policy(cfg, manifest)
    table = read_sample(cfg.data.shards, "train", images)  # drawn across the split
    originals = decode_for_probes(table, manifest, view_size(cfg, manifest))
    batch = torch.from_numpy(np.ascontiguousarray(originals))
    rows = {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("image", "id")}
    columns = []
    for d in range(draws):
        policy.seed = seed + d
        if manifest.get("image_size"):
            views = policy.apply(batch)
        else:
            crops = crop_batch(rows, policy.crop_specs(), manifest["mode"], seed=seed + d)
            views = policy.apply({k: torch.from_numpy(v) for k, v in crops.items() if k.startswith("crop_")})
        columns += [(f"draw {d + 1} {name}", views[name]) for name in sorted(views)]
    fig, axes = plt.subplots(len(originals), 1 + len(columns), figsize=(1.3 * (1 + len(columns)), 1.3 * len(originals)))
    axes = np.atleast_2d(axes)
    original = (batch.permute(0, 3, 1, 2).float() / 255 - PIXEL_MEAN) / PIXEL_STD
    for row in range(len(originals)):
        _show(axes[row, 0], original[row])
        for col, (_, tensor) in enumerate(columns, start=1):
            _show(axes[row, col], tensor[row])
    axes[0, 0].set_title("image", fontsize=7)
    for col, (title, _) in enumerate(columns, start=1):
        axes[0, col].set_title(title, fontsize=6)
    fig.suptitle(f"{cfg.method.name} views ({policy.__class__.__name__})", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
