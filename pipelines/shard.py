"""``rayssl shard``: write validated Parquet shards from a source that ``pipelines.sources`` reads.

Sources: Fashion-MNIST, CIFAR-10, CIFAR-100 and STL-10 in the files their archives unpack to, and image
folders (class sub-folders give labels; ImageNet-style ``train/`` and ``val/`` folders give the splits).
Every image is opened, fully decoded, converted and checked here, once: unreadable files are
skipped and counted in the manifest (or stop the run with ``strict``). A folder's images keep their own
size (the shorter side capped at ``max_size``), a JPEG its own bytes where it can; ``size`` makes fixed
squares instead. Folders and STL-10 are listed here and decoded in Ray tasks, on every core of the cluster
(``parallel``). ``source`` and ``out`` are folders or object-store prefixes (``s3://bucket/shards``).
Each shard is published whole, ``manifest.json`` comes last, and a re-run after an interruption keeps
the shards already written with the same rows.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.data import DEFAULT_MAX_SIZE, IMAGE_SUFFIXES, SCHEMA, DataError, EncodedImage
from pipelines.sampling import hash_fraction, mixed_order
from pipelines.sources import Encoded, Source, open_source

Row = tuple[EncodedImage, int, str]  # (image, label, id): one row of a shard


@dataclass
class _SplitWriter:
    """Writes one split's rows into numbered Parquet files under ``out_dir`` (a folder or an ``s3://`` prefix).

    Each file is published whole (``storage.write_bytes``). A part that an interrupted run already wrote
    with the same rows (the digest of its ids and labels, kept in the file's footer) is not written again.
    """

    out_dir: str
    rows_per_shard: int
    encoding: str  # how images are encoded (mode, size, max_size): part of each part's digest
    rows: list[Row] = field(default_factory=list)
    # the image bytes of ``rows``, turned into Arrow arrays IMAGE_CHUNK_ROWS at a time as rows arrive: with Ray
    # tasks encoding, the driver does this between results, not all at once when a part is written
    image_chunks: list[pa.Array] = field(default_factory=list)
    written: int = 0
    label_counts: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    reused: int = 0
    files: list[str] = field(default_factory=list)

    def write(self, rows: Iterator[Row], limit: int | None) -> None:
        """Write ``rows`` (a split's, from ``_rows``) up to ``limit`` of them, then the last part; closes ``rows``."""
        with closing(rows):
            # the limit is checked before the next row is asked for: files past it are neither read nor skipped
            while limit is None or self.written + len(self.rows) < limit:
                row = next(rows, None)
                if row is None:
                    break
                self.rows.append(row)
                if len(self.rows) % IMAGE_CHUNK_ROWS == 0:
                    self._convert_images()
                if len(self.rows) >= self.rows_per_shard:
                    self.flush()
        self.flush()

    def _convert_images(self) -> None:
        """The image bytes of the rows not yet converted, as one more Arrow array."""
        done = sum(len(chunk) for chunk in self.image_chunks)
        self.image_chunks.append(pa.array([image.data for image, _, _ in self.rows[done:]], type=pa.binary()))

    def flush(self) -> None:
        if not self.rows:
            return
        images, labels, ids = zip(*self.rows, strict=True)
        name = f"part-{len(self.files):05d}.parquet"
        digest = hashlib.sha1(json.dumps([ids, labels, self.encoding]).encode("utf-8", "surrogateescape")).hexdigest()
        target = f"{self.out_dir}/{name}"
        if _footer_digest(target) == digest:
            self.reused += 1
        else:
            self._convert_images()
            columns = {"image": pa.chunked_array(self.image_chunks, type=pa.binary()), "label": list(labels), "id": list(ids)}
            columns.update(height=[i.height for i in images], width=[i.width for i in images])
            table = pa.table(columns, schema=SCHEMA)
            table = table.replace_schema_metadata({DIGEST_KEY: digest})
            # a reader never sees a half-written shard; image bytes are JPEG or PNG already: not compressed again
            storage.write_parquet(target, table, row_group_size=ROW_GROUP_ROWS, compression=PART_COMPRESSION)
        self.files.append(name)
        self.written += len(self.rows)
        self.label_counts.update(labels)
        self.kinds.update(i.kind for i in images)
        self.heights += [i.height for i in images]
        self.widths += [i.width for i in images]
        self.rows, self.image_chunks = [], []

    def remove_strays(self) -> None:
        """Delete part files this run did not write (left by an interrupted run with other settings)."""
        fs, base = pafs.FileSystem.from_uri(self.out_dir)
        for found in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            if found.base_name.startswith(("part-", ".part-")) and found.base_name not in self.files:
                fs.delete_file(found.path)

    def summary(self, num_classes: int) -> dict:
        """Rows, labeled rows, rows per class (in the manifest's class order) and the part files."""
        labeled = sum(n for label, n in self.label_counts.items() if label >= 0)
        class_counts = [self.label_counts[c] for c in range(num_classes)]
        return {"rows": self.written, "labeled": labeled, "class_counts": class_counts, "shards": self.files}


IMAGE_CHUNK_ROWS = 256
PART_COMPRESSION = {"image": "none", "label": "snappy", "id": "snappy", "height": "snappy", "width": "snappy"}
# Row groups are the unit a reader can fetch alone: a probe's sampled rows cost the row groups that hold
# them (pipelines.data.read_sample), not whole shards.
ROW_GROUP_ROWS = 1024
DIGEST_KEY = b"rayssl.rows_digest"  # in each part's Parquet footer: which rows it holds, so a re-run can keep it


def _footer_digest(target: str) -> str | None:
    """The rows digest of an existing part file, or None when there is none (or it is unreadable)."""
    fs, path = pafs.FileSystem.from_uri(target)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    except (pa.ArrowException, OSError):
        return None
    value = metadata.get(DIGEST_KEY)
    return value.decode() if value else None


@dataclass
class ShardResult:
    out_dir: str
    manifest: dict
    reused: int = 0  # part files an interrupted run had written with the same rows, kept as they were

    @property
    def skipped(self) -> list[dict]:
        return self.manifest["skipped"]


# Files per encode task: ~40 ms of work for 64 photos of 500 x 375 (a kept JPEG is checked at 1/8 scale), so
# a task's overhead is small and the driver keeps every core busy with a few tasks in flight per CPU. 32 files
# a task made ~1,950 photos/s on 2 cores, 64 made ~2,300 (3 runs each); 128 left cores idle at the end of 800.
FILES_PER_TASK = 64
# Below this many files, starting a local Ray (~8 s) costs more than it saves; a running Ray is used anyway.
PARALLEL_MIN_FILES = 2_000


def _encoded_in_order(keys: list, encode: Callable[[list], list[Encoded]], parallel: bool) -> Iterator[Encoded]:
    """Each key's result, in order. ``parallel``: Ray tasks of ``FILES_PER_TASK`` keys, a few per CPU in flight.

    A lazy stream: when the caller stops (``--limit`` reached), the tasks still in flight are cancelled.
    """
    batches = (keys[i : i + FILES_PER_TASK] for i in range(0, len(keys), FILES_PER_TASK))
    if not parallel:
        for batch in batches:
            yield from encode(batch)
        return
    import ray

    task = ray.remote(num_cpus=1, max_retries=3)(_encode_batch)
    encode_ref = ray.put(encode)  # the source's encode function, shipped to the object store once
    in_flight = max(2, 3 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque = deque()

    def submit(batch: list) -> None:
        pending.append(task.remote(encode_ref, batch))

    try:
        for batch in batches:
            submit(batch)
            if len(pending) >= in_flight:
                yield from ray.get(pending.popleft())
        while pending:
            yield from ray.get(pending.popleft())
    finally:
        for ref in pending:
            ray.cancel(ref)


def _encode_batch(encode: Callable[[list], list[Encoded]], keys: list) -> list[Encoded]:
    """One Ray task's work: the source's own encode function (image files, STL-10 images) on a batch of keys."""
    return encode(keys)


def _use_ray(parallel: bool | None, src: Source) -> bool:
    """Ray tasks when asked, or (``None``) when the source is large or Ray already runs; starts a local Ray if needed."""
    if not src.parallel or parallel is False:
        return False
    import ray

    if parallel is None and not ray.is_initialized() and sum(len(v) for v in src.items.values()) < PARALLEL_MIN_FILES:
        return False
    from pipelines.cluster import ensure_ray

    ensure_ray()
    return True


def _size_summary(values: list[int]) -> dict:
    if not values:
        return {}
    return {"min": int(np.min(values)), "median": int(np.median(values)), "max": int(np.max(values))}


def write_shards(
    source: str,
    out: str | Path,
    rows_per_shard: int = 10_000,
    strict: bool = False,
    limit: int | None = None,
    mode: str | None = None,
    size: int | None = None,
    test_fraction: float = 0.2,
    keep_labels: float | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    parallel: bool | None = None,
    label_set: str | None = None,
) -> ShardResult:
    """Shard ``source`` into ``out/train`` and ``out/test``: ``fashion-mnist``, ``cifar10:PATH``, ``cifar100:PATH``,
    ``stl10:PATH`` (``pipelines.sources``), or an image folder, local or ``s3://``.

    A folder's images keep their own size, the shorter side capped at ``max_size`` (0: no cap), and a
    JPEG its own bytes where it needs no change; ``size`` makes ``size`` x ``size`` centre crops instead.
    Rows are written in a mixed order (``sampling.mixed_order``): every shard holds every class in
    proportion, whatever order the source lists them in, and the same order on every re-run.
    ``limit`` keeps that many rows per split: the first of the mixed order, a sample stratified by class.
    ``keep_labels`` (0..1) keeps that share of the train split's labels, chosen by a hash
    of the image id, and writes the rest as unlabeled: the semi-supervised setting.
    The test split keeps its labels: it is what the probes report.
    ``parallel``: decode a folder's files (or STL-10's images) in Ray tasks (None: when it holds 2,000 files
    or more, or Ray already runs); the rows written are the same either way.
    ``label_set``: CIFAR-100's ``fine`` labels (the default) or its 20 ``coarse`` superclasses.
    """
    _check_options(keep_labels, max_size, size)
    src = open_source(source, mode, size, max_size, test_fraction, label_set)
    use_ray = _use_ray(parallel, src)
    out = out if storage.is_remote(out) else str(Path(out).expanduser().resolve())
    storage.check_bucket(out, "--out")
    _remove_manifest(out)  # until the new one is written last, nobody mistakes this folder for a whole shard set
    encoding = json.dumps([src.mode, src.image_size, 0 if src.image_size else max_size])
    writers = {s: _SplitWriter(f"{out}/{s}", rows_per_shard, encoding) for s in ("train", "test")}
    skipped: list[dict] = []
    for split, writer in writers.items():
        rows = _rows(src.items[split], src.encode, use_ray, strict, skipped)
        writer.write(_kept_labels(rows, keep_labels) if split == "train" else rows, limit)
    if writers["train"].written == 0 and writers["test"].written == 0:
        why = f"all {len(skipped)} image files were unreadable" if skipped else "no image files found"
        raise DataError(f"{source}: {why}; image suffixes read: {', '.join(sorted(IMAGE_SUFFIXES))}")
    manifest = _manifest(source, src, writers, skipped, keep_labels, max_size)
    for writer in writers.values():
        writer.remove_strays()
    storage.write_bytes(f"{out}/manifest.json", json.dumps(manifest, indent=2).encode())
    return ShardResult(out, manifest, reused=sum(w.reused for w in writers.values()))


def _check_options(keep_labels: float | None, max_size: int, size: int | None) -> None:
    if keep_labels is not None and not 0 <= keep_labels <= 1:
        raise DataError(f"--keep-labels {keep_labels}: give the share of train labels to keep, between 0 and 1")
    if max_size < 0:
        raise DataError(f"--max-size {max_size}: give the largest shorter side in px, or 0 to keep every size")
    if size is not None and size < 1:
        raise DataError(f"--size {size}: give the square size in px (at least 1), or leave it out to keep each size")


def _rows(
    items: list[tuple[str, int, object]],
    encode: Callable[[list], list[Encoded]],
    use_ray: bool,
    strict: bool,
    skipped: list[dict],
) -> Iterator[Row]:
    """One split's readable rows, encoded in the mixed order; each unreadable file is added to ``skipped``.

    A lazy stream: when the writer stops (``limit`` reached), closing it cancels the encode tasks in flight.
    """
    items = [items[i] for i in mixed_order([it[0] for it in items], [it[1] for it in items])]
    results = _encoded_in_order([key for _, _, key in items], encode, use_ray)
    try:
        for (image_id, label, key), result in zip(items, results, strict=False):
            if isinstance(result, str):
                if strict:
                    raise DataError(f"{key}: {result}; fix or remove it, or run without --strict to skip it")
                skipped.append({"file": image_id, "reason": result})
                continue
            yield result, label, image_id
    finally:
        results.close()


def _kept_labels(rows: Iterator[Row], keep_labels: float | None) -> Iterator[Row]:
    """``rows`` with ``keep_labels`` (0..1) of their labels, chosen by a hash of the image id; the rest unlabeled (-1)."""
    with closing(rows):  # closed when the writer stops: the encode tasks in flight are cancelled
        for image, label, image_id in rows:
            if keep_labels is not None and label >= 0 and hash_fraction("keep-labels:" + image_id) >= keep_labels:
                label = -1
            yield image, label, image_id


def _manifest(source: str, src: Source, writers: dict, skipped: list[dict], keep_labels: float | None, max_size: int) -> dict:
    heights = [h for w in writers.values() for h in w.heights]
    widths = [x for w in writers.values() for x in w.widths]
    return {
        "source": source,
        "mode": src.mode,
        "channels": 1 if src.mode == "L" else 3,
        "image_size": src.image_size,  # [height, width] of every image, or None: each keeps its own
        "max_size": None if src.image_size else max_size,
        "sizes": {"height": _size_summary(heights), "width": _size_summary(widths)},
        "encodings": dict(sorted(sum((w.kinds for w in writers.values()), Counter()).items())),
        "classes": src.classes,
        "label_set": src.label_set,  # CIFAR-100: "fine" or "coarse"; None for a source with one set of labels
        "split_by": src.split_by,  # "dataset" (its own train/test), "folders" (train/ and val/) or "hash" (of each path)
        "splits": {s: w.summary(len(src.classes)) for s, w in writers.items()},
        "keep_labels": keep_labels,
        "skipped_count": len(skipped),
        "skipped": sorted(skipped, key=lambda s: s["file"]),
    }


def _remove_manifest(out: str) -> None:
    fs, base = pafs.FileSystem.from_uri(out)
    if fs.get_file_info(f"{base}/manifest.json").type == pafs.FileType.File:
        fs.delete_file(f"{base}/manifest.json")
