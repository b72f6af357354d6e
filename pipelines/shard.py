"""``rayssl shard``: write validated Parquet shards from Fashion-MNIST or an image folder.

Every image is opened, fully decoded, converted and checked here, once: unreadable files are
skipped and counted in the manifest (or stop the run with ``strict``). A folder's images keep their own
size (the shorter side capped at ``max_size``), a JPEG its own bytes where it can; ``size`` makes fixed
squares instead. The files are listed here and decoded in Ray tasks, on every core of the cluster
(``parallel``). ``source`` and ``out`` are folders or object-store prefixes (``s3://bucket/shards``).
Each shard is published whole, ``manifest.json`` comes last, and a re-run after an interruption keeps
the shards already written with the same rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.data import (
    DEFAULT_MAX_SIZE,
    FASHION_MNIST_CLASSES,
    IMAGE_SUFFIXES,
    SCHEMA,
    DataError,
    EncodedImage,
    encode_image_file,
    encode_png,
    read_fashion_mnist,
)
from pipelines.sampling import hash_fraction, mixed_order


@dataclass
class _SplitWriter:
    """Writes one split's rows into numbered Parquet files under ``out_dir`` (a folder or an ``s3://`` prefix).

    Each file is published whole (``storage.write_bytes``). A part that an interrupted run already wrote
    with the same rows (the digest of its ids and labels, kept in the file's footer) is not written again.
    """

    out_dir: str
    rows_per_shard: int
    encoding: str  # how images are encoded (mode, size, max_size): part of each part's digest
    rows: list[tuple[EncodedImage, int, str]] = field(default_factory=list)
    written: int = 0
    label_counts: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    reused: int = 0
    files: list[str] = field(default_factory=list)

    def add(self, image: EncodedImage, label: int, image_id: str) -> None:
        self.rows.append((image, label, image_id))
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

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
            columns = {"image": [i.data for i in images], "label": list(labels), "id": list(ids)}
            columns.update(height=[i.height for i in images], width=[i.width for i in images])
            table = pa.table(columns, schema=SCHEMA)
            table = table.replace_schema_metadata({DIGEST_KEY: digest})
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS)
            storage.write_bytes(target, buffer.getvalue().to_pybytes())  # a reader never sees a half-written shard
        self.files.append(name)
        self.written += len(self.rows)
        self.label_counts.update(labels)
        self.kinds.update(i.kind for i in images)
        self.heights += [i.height for i in images]
        self.widths += [i.width for i in images]
        self.rows = []

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


def _folder_files(root: Path) -> Iterator[Path]:
    """Image files under ``root``, sorted; symlinks are not followed, so the walk never leaves root."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_symlink():
                yield path


def _listed_files(root: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``(relative path, path or URI)`` of every image file under a local folder or an object-store prefix, sorted,
    and the class names (sub-folders)."""
    if not storage.is_remote(root):
        base = Path(root)
        if not base.exists():
            raise DataError(f"{root}: no such file or folder; give an image folder or 'fashion-mnist'")
        if not base.is_dir():
            raise DataError(f"{root}: not a folder; give a folder of images (class sub-folders give labels)")
        classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink())
        files = [(_as_text(str(p.relative_to(base))), str(p)) for p in _folder_files(base)]
        return files, [_as_text(name) for name in classes]
    fs, base = pafs.FileSystem.from_uri(root.rstrip("/"))
    found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    scheme = root.split("://", 1)[0]
    files = sorted(f.path[len(base) + 1 :] for f in found if f.type == pafs.FileType.File)
    files = [rel for rel in files if Path(rel).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no image files under this prefix; give a folder of images (class sub-folders give labels)")
    return [(rel, f"{scheme}://{base}/{rel}") for rel in files], sorted({rel.split("/", 1)[0] for rel in files if "/" in rel})


def _as_text(name: str) -> str:
    """A file name as valid text: bytes that are not UTF-8 become ``\\xe9`` escapes, so distinct names stay distinct."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# What one encode task returns for each file: the encoded image, or why the file was unreadable.
Encoded = EncodedImage | str


def encode_files(paths: list[str], mode: str, size: int | None, max_size: int) -> list[Encoded]:
    """Read, decode, check and encode image files (local paths or URIs): one Ray task's work, or the in-process loop's."""
    out: list[Encoded] = []
    for path in paths:
        try:
            out.append(encode_image_file(_read_file(path), mode, size, max_size))
        except (ValueError, OSError) as err:
            out.append(str(err))
    return out


def _read_file(path: str) -> bytes:
    if not storage.is_remote(path):
        return Path(path).read_bytes()
    fs, where = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(where) as f:
        return f.read()


@dataclass
class _Source:
    """What a source holds, listed before anything is decoded: ``(id, label, key)`` items per split.

    ``encode(keys)`` decodes, checks and encodes items (an ``EncodedImage``, or the reason one is
    unreadable); the writer calls it only for the items it writes. ``encode`` is a picklable function
    when the source can be encoded in Ray tasks (``parallel``).
    """

    mode: str
    image_size: list[int] | None  # None: every image keeps its own size
    classes: list[str]
    items: dict[str, list[tuple[str, int, object]]]
    encode: Callable[[list], list[Encoded]]
    parallel: bool = False


def _fashion_mnist_source() -> _Source:
    items, arrays = {}, {}
    for split in ("train", "test"):
        arrays[split], labels = read_fashion_mnist(split)
        items[split] = [(f"fashion-mnist/{split}/{i:05d}", int(label), (split, i)) for i, label in enumerate(labels)]

    def encode(keys):  # in memory already, and fast: no tasks needed
        return [EncodedImage(encode_png(arrays[split][i]), 28, 28, "png") for split, i in keys]

    return _Source("L", [28, 28], FASHION_MNIST_CLASSES, items, encode)


def _folder_source(root: str, mode: str, size: int | None, max_size: int, test_fraction: float) -> _Source:
    """Class sub-folders give labels (sorted names); images directly in ``root`` are unlabeled (-1).

    A labeled image goes to ``test`` by a hash of its path, with probability ``test_fraction``.
    """
    files, classes = _listed_files(root)
    class_index = {name: i for i, name in enumerate(classes)}
    items: dict[str, list] = {"train": [], "test": []}
    for rel, path in files:
        label = class_index[rel.split("/", 1)[0]] if "/" in rel else -1
        split = "test" if label >= 0 and hash_fraction(rel) < test_fraction else "train"
        items[split].append((rel, label, path))
    encode = functools.partial(encode_files, mode=mode, size=size, max_size=max_size)
    return _Source(mode, [size, size] if size else None, classes, items, encode, parallel=True)


# Files per encode task: ~0.2-0.5 s of work for 300-600 px photos, so a task's overhead is small and the
# driver keeps every core busy with a few tasks in flight per CPU.
FILES_PER_TASK = 32
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

    task = ray.remote(num_cpus=1, max_retries=3)(encode_files)
    in_flight = max(2, 3 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque = deque()

    def submit(batch: list) -> None:
        pending.append(task.remote(batch, **encode.keywords))

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


def _use_ray(parallel: bool | None, src: _Source) -> bool:
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
) -> ShardResult:
    """Shard ``source`` (``fashion-mnist`` or an image folder, local or ``s3://``) into ``out/train`` and ``out/test``.

    A folder's images keep their own size, the shorter side capped at ``max_size`` (0: no cap), and a
    JPEG its own bytes where it needs no change; ``size`` makes ``size`` x ``size`` centre crops instead.
    Rows are written in a mixed order (``sampling.mixed_order``): every shard holds every class in
    proportion, whatever order the source lists them in, and the same order on every re-run.
    ``limit`` keeps that many rows per split: the first of the mixed order, a sample stratified by class.
    ``keep_labels`` (0..1) keeps that share of the train split's labels, chosen by a hash
    of the image id, and writes the rest as unlabeled: the semi-supervised setting.
    The test split keeps its labels: it is what the probes report.
    ``parallel``: decode a folder's files in Ray tasks (None: when it holds 2,000 files or more, or Ray
    already runs); the rows written are the same either way.
    """
    if keep_labels is not None and not 0 <= keep_labels <= 1:
        raise DataError(f"--keep-labels {keep_labels}: give the share of train labels to keep, between 0 and 1")
    if max_size < 0:
        raise DataError(f"--max-size {max_size}: give the largest shorter side in px, or 0 to keep every size")
    if size is not None and size < 1:
        raise DataError(f"--size {size}: give the square size in px (at least 1), or leave it out to keep each size")

    def train_label(label: int, image_id: str) -> int:
        if keep_labels is None or label < 0 or hash_fraction("keep-labels:" + image_id) < keep_labels:
            return label
        return -1

    if source == "fashion-mnist":
        src = _fashion_mnist_source()
    else:
        src = _folder_source(source, mode or "RGB", size, max_size, test_fraction)
    use_ray = _use_ray(parallel, src)
    out = out if storage.is_remote(out) else str(Path(out).expanduser().resolve())
    storage.check_bucket(out, "--out")
    _remove_manifest(out)  # until the new one is written last, nobody mistakes this folder for a whole shard set
    encoding = json.dumps([src.mode, src.image_size, 0 if src.image_size else max_size])
    writers = {s: _SplitWriter(f"{out}/{s}", rows_per_shard, encoding) for s in ("train", "test")}
    skipped: list[dict] = []
    for split, writer in writers.items():
        items = [src.items[split][i] for i in mixed_order([it[0] for it in src.items[split]], [it[1] for it in src.items[split]])]
        results = _encoded_in_order([key for _, _, key in items], src.encode, use_ray)
        for (image_id, label, key), result in zip(items, results, strict=False):  # results stop at the limit
            if limit is not None and writer.written + len(writer.rows) >= limit:
                results.close()  # cancels the tasks still in flight
                break
            if isinstance(result, str):
                if strict:
                    raise DataError(f"{key}: {result}; fix or remove it, or run without --strict to skip it")
                skipped.append({"file": image_id, "reason": result})
                continue
            writer.add(result, train_label(label, image_id) if split == "train" else label, image_id)
        writer.flush()
    if writers["train"].written == 0 and writers["test"].written == 0:
        why = f"all {len(skipped)} image files were unreadable" if skipped else "no image files found"
        raise DataError(f"{source}: {why}; image suffixes read: {', '.join(sorted(IMAGE_SUFFIXES))}")
    heights = [h for w in writers.values() for h in w.heights]
    widths = [x for w in writers.values() for x in w.widths]
    manifest = {
        "source": source,
        "mode": src.mode,
        "channels": 1 if src.mode == "L" else 3,
        "image_size": src.image_size,  # [height, width] of every image, or None: each keeps its own
        "max_size": None if src.image_size else max_size,
        "sizes": {"height": _size_summary(heights), "width": _size_summary(widths)},
        "encodings": dict(sorted(sum((w.kinds for w in writers.values()), Counter()).items())),
        "classes": src.classes,
        "splits": {s: w.summary(len(src.classes)) for s, w in writers.items()},
        "keep_labels": keep_labels,
        "skipped_count": len(skipped),
        "skipped": sorted(skipped, key=lambda s: s["file"]),
    }
    for writer in writers.values():
        writer.remove_strays()
    storage.write_bytes(f"{out}/manifest.json", json.dumps(manifest, indent=2).encode())
    return ShardResult(out, manifest, reused=sum(w.reused for w in writers.values()))


def _remove_manifest(out: str) -> None:
    fs, base = pafs.FileSystem.from_uri(out)
    if fs.get_file_info(f"{base}/manifest.json").type == pafs.FileType.File:
        fs.delete_file(f"{base}/manifest.json")
