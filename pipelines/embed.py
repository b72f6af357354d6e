"""``rayssl embed``: embed a whole image set with a pretrained encoder, as Ray Data batch inference.

Reads shards (or shards an image folder first), decodes PNGs in Ray Data tasks, and runs the encoder
in a pool of actors that each hold it once (``map_batches`` with a class): on GPUs when the cluster
has them, one GPU per actor. Writes Parquet with ``id``, ``label`` (-1 when unlabeled), ``split`` and
``embedding`` (a fixed-size list of float32, readable by pandas, pyarrow, DuckDB), streaming: memory
stays flat whatever the number of images.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from pipelines.data import DataError, decode_image_batch, eval_batch, read_manifest, resolve_uri, split_uri
from pipelines.export import embedding_model_from_checkpoint
from pipelines.shard import write_shards
from pipelines.stream import data_context


class EmbedBatch:
    """A Ray Data actor: holds the encoder (an ``EmbeddingModel``) and embeds batches of shard rows, each image
    as the probes saw it (``crop``: photos of their own sizes resized and centre-cropped to it; None: as stored)."""

    def __init__(self, model: torch.nn.Module, crop: int | None, mode: str):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device).eval()
        self.crop, self.mode = crop, mode

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = {"image": batch["image"], "id": batch["id"]}
        images = decode_image_batch(rows)["image"] if self.crop is None else eval_batch(rows, self.crop, self.mode)
        with torch.no_grad():
            embeddings = self.model(torch.from_numpy(images).to(self.device)).float().cpu().numpy()
        flat = pa.array(embeddings.reshape(-1), type=pa.float32())
        return pa.table(
            {
                "id": pa.array(batch["id"], type=pa.string()),
                "label": pa.array(batch["label"], type=pa.int64()),
                "split": pa.array([Path(p).parent.name for p in batch["path"]], type=pa.string()),  # <shards>/<split>/x
                "embedding": pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1]),
            }
        )


@dataclass
class EmbedResult:
    out: str
    rows: int
    dim: int


def as_shards(data: str, info: dict, tmp: str) -> str:
    """``data`` when it holds shards; an image folder is sharded first, in the encoder's channels: at its fixed
    size when it was pretrained on images of one size, else each image at its own size (probed by centre crop)."""
    if (Path(data) / "manifest.json").is_file() or "://" in data:
        return data
    if not Path(data).is_dir():
        raise DataError(f"--data {data}: neither shards (no manifest.json) nor an image folder")
    mode = "L" if info["in_channels"] == 1 else "RGB"
    out = Path(tmp) / "shards"
    fixed = info["preprocess"].startswith("none")
    size = info["image_size"][0]
    print(f"sharding the image folder {data} {f'at {size} px' if fixed else 'at its own sizes'}, {mode} (the encoder's input)")
    write_shards(data, out, mode=mode, size=size if fixed else None)
    return str(out)


def encoder_replicas(asked: int | None, gpus: int, cpus: int) -> int:
    """How many encoder actors: one per GPU, else one CPU fewer than the cluster has. Each CPU actor holds a CPU
    for the whole job, and the read and decode tasks need one too: 2 actors on 2 CPUs waited forever."""
    most = gpus if gpus else max(1, cpus - 1)
    return min(asked, most) if asked else most


def embed(
    checkpoint: str | Path, data: str, out: str, limit: int | None = None, batch_size: int = 256, actors: int | None = None
) -> EmbedResult:
    """Embed every image of ``data`` (train, then test) with the checkpoint's encoder into Parquet under ``out``."""
    model, info = embedding_model_from_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        shards = as_shards(data, info, tmp)
        manifest = read_manifest(shards)
        fixed = manifest.get("image_size")
        if manifest["channels"] != info["in_channels"] or (fixed and list(fixed) != info["image_size"]):
            raise DataError(
                f"--data {data}: {manifest['channels']}-channel {fixed or 'variable-size'} images, but the encoder takes "
                f"{info['in_channels']}-channel {info['image_size']}; shard them with --mode to match, and --size "
                f"{info['image_size'][0]} or no --size (each image at its own size, centre-cropped to it)"
            )
        crop = None if fixed else info["image_size"][0]
        splits = [split_uri(shards, s) for s in ("train", "test") if manifest["splits"].get(s, {}).get("rows", 0)]
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = encoder_replicas(actors, gpus, int(ray.cluster_resources().get("CPU", 1)))
        out_uri = resolve_uri(out)
        # Rows are keyed by id; their order in the output is not the input's (Ray Data's preserve_order
        # did not hold through the encoder's actor pool: a 64-row batch came out late, 1 run in 4).
        with data_context(enable_progress_bars=True):  # one bar for the whole job
            ds = ray.data.read_parquet(splits, include_paths=True).select_columns(["image", "label", "id", "path"])
            if limit is not None:
                ds = ds.limit(limit)
            ds = ds.map_batches(
                EmbedBatch,
                fn_constructor_args=(model, crop, manifest["mode"]),
                batch_size=batch_size,
                batch_format="numpy",
                concurrency=actors,
                num_gpus=1 if gpus else 0,
            )
            ds.write_parquet(out_uri)
    rows = ray.data.read_parquet(out_uri).count()
    return EmbedResult(out_uri, rows, info["num_features"])
