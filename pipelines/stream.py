"""The data stage of pretraining: Ray Data reads the Parquet shards, decodes them and makes the views.

Rows stream from the shards to the Ray Train workers a block at a time, per epoch; views are
made here in Ray Data's CPU tasks (``data.augment_on: cpu``) or in the worker (``device``).
Images of one size are decoded whole; photos that keep their own sizes have each view cropped
from the original as it is decoded (``pipelines/crops.py``), and the worker's policy takes the crops.
"""

from __future__ import annotations

import contextlib

import ray
import ray.data

from pipelines.build import view_policy
from pipelines.config import Config
from pipelines.crops import crop_batch
from pipelines.data import decode_image_batch, split_uri
from pipelines.deferred import Deferred
from ssl_models.views import CropSpec


class ViewsFromShards:
    """Ray Data ``map_batches`` callable: decode the image bytes, then the method's view policy (None: the worker's).

    ``crops`` (shards of any image sizes): each view's crop is cut from the original as it is decoded, and
    the policy takes the crops; None (images of one size): whole images, and the policy crops them.
    A task's rows are made ``rows_per_yield`` at a time, each part passed on as soon as it is made: a large task
    keeps Ray Data's slots busy (``rows_per_views_task``) and its first views still travel at once.
    """

    def __init__(self, policy, crops: list[CropSpec] | None = None, mode: str = "RGB", rows_per_yield: int = 1 << 30):
        self.policy, self.crops, self.mode, self.rows_per_yield = policy, crops, mode, rows_per_yield

    def __call__(self, batch):
        rows = len(batch["image"])
        for start in range(0, max(rows, 1), self.rows_per_yield):
            yield self._views({k: v[start : start + self.rows_per_yield] for k, v in batch.items()})

    def _views(self, batch):
        decoded = decode_image_batch(batch) if self.crops is None else crop_batch(batch, self.crops, self.mode)
        decoded.pop("id", None)  # only for naming a row that does not decode; the trainer takes tensors
        return decoded if self.policy is None else self.policy(decoded)


# Ray Data's default of 128 MiB suits bulk data: here one block held a whole 10,000-image
# shard's views, so each epoch's first batch waited until a task had augmented a whole shard.
# Share of each epoch the workers waited for data (SimCLR, 8,192 images, 2 CPU workers, one
# Ray instance): 128 MiB 11.7%, 2 MiB 8.1%, 1 MiB 6.6% (~670 Fashion-MNIST view pairs).
# Small blocks also let Ray Data's backpressure work in smaller steps.
VIEW_BLOCK_BYTES = 1024**2
# ...but a block holds at least this many rows' views: 224 px view pairs take 300 kB a row, and blocks of 3
# rows left the stream moving blocks, not views. Photos at 224 px, 2 cores, nothing but the copy in the
# task: 118 view pairs/s with 1 MiB blocks, 180 with 16 MiB (benchmarks/ingest_photos.py measures it whole).
VIEW_BLOCK_ROWS = 32


def view_block_bytes(specs: list[CropSpec], channels: int) -> int:
    """Target bytes of a block of views: VIEW_BLOCK_BYTES, or VIEW_BLOCK_ROWS rows of uint8 views if more."""
    return max(VIEW_BLOCK_BYTES, VIEW_BLOCK_ROWS * _view_row_bytes(specs, channels))


def rows_per_view_block(specs: list[CropSpec], channels: int) -> int:
    """Rows of uint8 views in a block of ``view_block_bytes``: 32 of 224 px view pairs, 668 of 28 px ones."""
    return view_block_bytes(specs, channels) // _view_row_bytes(specs, channels)


def _view_row_bytes(specs: list[CropSpec], channels: int) -> int:
    """Bytes of one row's uint8 views."""
    return channels * sum(spec.size**2 for spec in specs)


@contextlib.contextmanager
def data_context(**settings):
    """Ray Data settings for the datasets created inside; the driver's own are put back after.

    A dataset keeps a copy of the context it was created with, so the settings last for it.
    """
    context = ray.data.DataContext.get_current()
    before = {name: getattr(context, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(context, name, value)
        yield
    finally:
        for name, value in before.items():
            setattr(context, name, value)


def read_train_shards(cfg: Config, block_bytes: int = VIEW_BLOCK_BYTES) -> ray.data.Dataset:
    """The train split's Parquet shards, files in a new order every epoch, read by Ray Data's V1 Parquet reader.

    Ray 2.60's default (V2) reader lists the files and reads their footers on a pool of new
    actor processes at the start of every epoch; on 2 cores that halved pretraining speed
    (``benchmarks/end_to_end.py``: 274 against 409 images/s with V1). V1 reads the footers
    once, here, and each epoch only runs the read tasks. ``block_bytes`` sizes the blocks of this dataset and
    of the stages after it (the views).
    """
    with data_context(use_datasource_v2=False, target_max_block_size=block_bytes):
        return ray.data.read_parquet(split_uri(cfg.data.shards, "train"), shuffle="files")


def build_pretrain_dataset(cfg: Config, manifest: dict, with_labels: bool = False) -> ray.data.Dataset:
    """Stream the train shards: read Parquet, decode, and (on CPU) make the views, per sample and per epoch.

    Makes no assumption about the rows' order: ``rayssl shard`` writes every class spread over each
    shard, the files come in a new order every epoch, and ``train_batches`` mixes rows in a window.
    ``with_labels`` passes the ``label`` column through to the workers (tests look at batch composition).
    """
    # One progress line per epoch from the trainer is enough; Ray Data's bars flood a terminal log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    policy = view_policy(cfg, manifest)
    specs = policy.crop_specs()
    # every row, labeled or not; id names a bad one
    ds = read_train_shards(cfg, view_block_bytes(specs, manifest["channels"]))
    ds = ds.select_columns(["image", "id", *(["label"] if with_labels else [])])
    if cfg.data.max_train_images:
        ds = ds.limit(cfg.data.max_train_images)
    crops = specs if manifest["image_size"] is None else None  # photos of their own sizes: cropped as decoded
    channels = manifest["channels"]
    stage = ViewsFromShards(
        policy if cfg.data.augment_on == "cpu" else None, crops, manifest["mode"], rows_per_view_block(specs, channels)
    )
    # Deferred: the actors that hold the plan (not the tasks) stay without torch
    return ds.map_batches(Deferred(stage), batch_size=rows_per_views_task(specs, channels))


# A view-making task's uint8 views (the policy makes the float ones a cache-sized chunk at a time): 256 rows of
# small images (28-32 px), ~220 rows of 224 px view pairs. Ray Data leaves each task slot idle ~0.2 s between
# one task's end and the next one's start (its executor polls every 0.1 s), so a task must work for much longer
# than that. 224 px view pairs on 2 cores: 55 rows a task kept the cores ~60% busy; 110 and 220 rows, each
# block passed on as it is made, made 300 and 335 pairs/s against 245 (one run each, 800 photos).
VIEWS_TASK_BYTES = 64 * 1024**2


def rows_per_views_task(specs: list[CropSpec], channels: int) -> int:
    """Rows per view-making task: 256 of small images (28-32 px), fewer of large views, at least 16."""
    return max(16, min(256, VIEWS_TASK_BYTES // _view_row_bytes(specs, channels)))


def train_images(cfg: Config, manifest: dict) -> int:
    """Images each epoch trains on (all workers)."""
    rows = manifest["splits"]["train"]["rows"]
    return min(rows, cfg.data.max_train_images or rows)


def train_batches(shard, cfg: Config, per_worker: int, epoch: int, rank: int, device):
    """One worker's batches for one epoch: rows mixed in a buffer of ``data.shuffle_buffer`` rows, seeded per epoch.

    Not ``randomize_block_order()``: in Ray 2.60 it is an all-to-all step that waits for every block of
    the epoch before passing one on, which holds the whole split in the object store. The file order
    (new every epoch, ``read_train_shards``) and this local buffer keep the stream streaming.
    """
    return shard.iter_torch_batches(
        batch_size=per_worker,
        drop_last=True,
        device=device,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        local_shuffle_seed=(cfg.train.seed * 100_000 + epoch) * 1_000 + rank,  # another mix every epoch, on every worker
    )
