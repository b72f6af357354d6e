"""``rayssl shard``: write validated Parquet shards from Fashion-MNIST or an image folder.

Every image is opened, fully decoded, converted and checked here, once: unreadable files are
skipped and counted in the manifest (or stop the run with ``strict``). ``out`` is a folder or an
object-store prefix (``s3://bucket/shards``). Each shard is published whole, ``manifest.json`` comes
last, and a re-run after an interruption keeps the shards already written with the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.data import (
    FASHION_MNIST_CLASSES,
    IMAGE_SUFFIXES,
    SCHEMA,
    DataError,
    encode_png,
    load_image,
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
    rows: list[tuple[bytes, int, str]] = field(default_factory=list)
    written: int = 0
    label_counts: Counter = field(default_factory=Counter)
    reused: int = 0
    files: list[str] = field(default_factory=list)

    def add(self, png: bytes, label: int, image_id: str) -> None:
        self.rows.append((png, label, image_id))
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        images, labels, ids = zip(*self.rows, strict=True)
        name = f"part-{len(self.files):05d}.parquet"
        digest = hashlib.sha1(json.dumps([ids, labels]).encode("utf-8", "surrogateescape")).hexdigest()
        target = f"{self.out_dir}/{name}"
        if _footer_digest(target) == digest:
            self.reused += 1
        else:
            table = pa.table({"image": list(images), "label": list(labels), "id": list(ids)}, schema=SCHEMA)
            table = table.replace_schema_metadata({DIGEST_KEY: digest})
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS)
            storage.write_bytes(target, buffer.getvalue().to_pybytes())  # a reader never sees a half-written shard
        self.files.append(name)
        self.written += len(self.rows)
        self.label_counts.update(labels)
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


def _as_text(name: str) -> str:
    """A file name as valid text: bytes that are not UTF-8 become ``\\xe9`` escapes, so distinct names stay distinct."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class _Source:
    """What a source holds, listed before anything is decoded: ``(id, label, key)`` items per split.

    ``encode(key)`` decodes, checks and encodes one item (raising ``ValueError`` or ``OSError``
    for an unreadable one); the writer calls it only for the items it writes.
    """

    mode: str
    image_size: list[int]
    classes: list[str]
    items: dict[str, list[tuple[str, int, object]]]
    encode: Callable[[object], bytes]


def _fashion_mnist_source() -> _Source:
    items, arrays = {}, {}
    for split in ("train", "test"):
        arrays[split], labels = read_fashion_mnist(split)
        items[split] = [(f"fashion-mnist/{split}/{i:05d}", int(label), (split, i)) for i, label in enumerate(labels)]
    return _Source("L", [28, 28], FASHION_MNIST_CLASSES, items, lambda key: encode_png(arrays[key[0]][key[1]]))


def _folder_source(root: Path, mode: str, size: int, test_fraction: float) -> _Source:
    """Class sub-folders give labels (sorted names); images directly in ``root`` are unlabeled (-1).

    A labeled image goes to ``test`` by a hash of its path, with probability ``test_fraction``.
    """
    if not root.exists():
        raise DataError(f"{root}: no such file or folder; give an image folder or 'fashion-mnist'")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give a folder of images (class sub-folders give labels)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    class_index = {name: i for i, name in enumerate(classes)}
    items: dict[str, list] = {"train": [], "test": []}
    for path in _folder_files(root):
        rel = path.relative_to(root)
        image_id = _as_text(str(rel))
        label = class_index[rel.parts[0]] if len(rel.parts) > 1 else -1
        split = "test" if label >= 0 and hash_fraction(image_id) < test_fraction else "train"
        items[split].append((image_id, label, path))
    # the manifest is JSON read by other tools
    classes = [_as_text(name) for name in classes]
    return _Source(mode, [size, size], classes, items, lambda path: encode_png(np.asarray(load_image(path, mode, size))))


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
) -> ShardResult:
    """Shard ``source`` (``fashion-mnist`` or an image folder) into ``out/train`` and ``out/test``.

    Rows are written in a mixed order (``sampling.mixed_order``): every shard holds every class in
    proportion, whatever order the source lists them in, and the same order on every re-run.
    ``limit`` keeps that many rows per split: the first of the mixed order, a sample stratified by class.
    ``keep_labels`` (0..1) keeps that share of the train split's labels, chosen by a hash
    of the image id, and writes the rest as unlabeled: the semi-supervised setting.
    The test split keeps its labels: it is what the probes report.
    """
    if keep_labels is not None and not 0 <= keep_labels <= 1:
        raise DataError(f"--keep-labels {keep_labels}: give the share of train labels to keep, between 0 and 1")

    def train_label(label: int, image_id: str) -> int:
        if keep_labels is None or label < 0 or hash_fraction("keep-labels:" + image_id) < keep_labels:
            return label
        return -1

    if source == "fashion-mnist":
        src = _fashion_mnist_source()
    else:
        src = _folder_source(Path(source), mode or "RGB", size or 32, test_fraction)
    out = out if storage.is_remote(out) else str(Path(out).expanduser().resolve())
    storage.check_bucket(out, "--out")
    _remove_manifest(out)  # until the new one is written last, nobody mistakes this folder for a whole shard set
    writers = {s: _SplitWriter(f"{out}/{s}", rows_per_shard) for s in ("train", "test")}
    skipped: list[dict] = []
    for split, writer in writers.items():
        items = src.items[split]
        for position in mixed_order([item[0] for item in items], [item[1] for item in items]):
            if limit is not None and writer.written + len(writer.rows) >= limit:
                break
            image_id, label, key = items[position]
            try:
                data = src.encode(key)
            except (ValueError, OSError) as err:
                if strict:
                    raise DataError(f"{key}: {err}; fix or remove it, or run without --strict to skip it") from None
                skipped.append({"file": image_id, "reason": str(err)})
                continue
            writer.add(data, train_label(label, image_id) if split == "train" else label, image_id)
        writer.flush()
    if writers["train"].written == 0 and writers["test"].written == 0:
        why = f"all {len(skipped)} image files were unreadable" if skipped else "no image files found"
        raise DataError(f"{source}: {why}; image suffixes read: {', '.join(sorted(IMAGE_SUFFIXES))}")
    manifest = {
        "source": source,
        "mode": src.mode,
        "channels": 1 if src.mode == "L" else 3,
        "image_size": src.image_size,
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
