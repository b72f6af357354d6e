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
from collections.abc import Iterator
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
    labeled: int = 0
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
            pq.write_table(table, buffer)
            storage.write_bytes(target, buffer.getvalue().to_pybytes())  # a reader never sees a half-written shard
        self.files.append(name)
        self.written += len(self.rows)
        self.labeled += sum(1 for label in labels if label >= 0)
        self.rows = []

    def remove_strays(self) -> None:
        """Delete part files this run did not write (left by an interrupted run with other settings)."""
        fs, base = pafs.FileSystem.from_uri(self.out_dir)
        for found in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            if found.base_name.startswith(("part-", ".part-")) and found.base_name not in self.files:
                fs.delete_file(found.path)

    def summary(self) -> dict:
        return {"rows": self.written, "labeled": self.labeled, "shards": self.files}


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


def _hash_fraction(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) for ``text``: the same split on every machine and re-run."""
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def _is_test(image_id: str, test_fraction: float) -> bool:
    return _hash_fraction(image_id) < test_fraction


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

    Folder sources: class sub-folders give labels (sorted names), images directly in
    the folder are unlabeled (-1); labeled images go to ``test`` by a hash of their
    path with probability ``test_fraction``. ``limit`` caps the rows per split.
    ``keep_labels`` (0..1) keeps that share of the train split's labels, chosen by a hash
    of the image id, and writes the rest as unlabeled: the semi-supervised setting.
    The test split keeps its labels: it is what the probes report.
    """
    if keep_labels is not None and not 0 <= keep_labels <= 1:
        raise DataError(f"--keep-labels {keep_labels}: give the share of train labels to keep, between 0 and 1")

    def train_label(label: int, image_id: str) -> int:
        if keep_labels is None or label < 0 or _hash_fraction("keep-labels:" + image_id) < keep_labels:
            return label
        return -1

    out = out if storage.is_remote(out) else str(Path(out).expanduser().resolve())
    storage.check_bucket(out, "--out")
    _remove_manifest(out)  # until the new one is written last, nobody mistakes this folder for a whole shard set
    writers = {s: _SplitWriter(f"{out}/{s}", rows_per_shard) for s in ("train", "test")}
    skipped: list[dict] = []
    if source == "fashion-mnist":
        mode, classes = "L", FASHION_MNIST_CLASSES
        for split, writer in writers.items():
            images, labels = read_fashion_mnist(split)
            n = len(images) if limit is None else min(limit, len(images))
            for i in range(n):
                image_id = f"fashion-mnist/{split}/{i:05d}"
                label = int(labels[i]) if split == "test" else train_label(int(labels[i]), image_id)
                writer.add(encode_png(images[i]), label, image_id)
            writer.flush()
        image_size = [28, 28]
    else:
        root = Path(source)
        if not root.exists():
            raise DataError(f"{root}: no such file or folder; give an image folder or 'fashion-mnist'")
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; give a folder of images (class sub-folders give labels)")
        mode = mode or "RGB"
        size = size or 32
        image_size = [size, size]
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink())
        class_index = {name: i for i, name in enumerate(classes)}
        classes = [_as_text(name) for name in classes]  # the manifest is JSON read by other tools
        for path in _folder_files(root):
            rel = path.relative_to(root)
            image_id = _as_text(str(rel))
            try:
                img = load_image(path, mode, size)
            except (ValueError, OSError) as err:
                if strict:
                    raise DataError(f"{path}: {err}; fix or remove it, or run without --strict to skip it") from None
                skipped.append({"file": image_id, "reason": str(err)})
                continue
            label = class_index[rel.parts[0]] if len(rel.parts) > 1 else -1
            split = "test" if label >= 0 and _is_test(image_id, test_fraction) else "train"
            if split == "train":
                label = train_label(label, image_id)
            writer = writers[split]
            if limit is None or writer.written + len(writer.rows) < limit:
                writer.add(encode_png(np.asarray(img)), label, image_id)
        for writer in writers.values():
            writer.flush()
        if writers["train"].written == 0 and writers["test"].written == 0:
            why = f"all {len(skipped)} image files were unreadable" if skipped else "no image files found"
            raise DataError(f"{root}: {why}; image suffixes read: {', '.join(sorted(IMAGE_SUFFIXES))}")
    manifest = {
        "source": source,
        "mode": mode,
        "channels": 1 if mode == "L" else 3,
        "image_size": image_size,
        "classes": classes,
        "splits": {s: w.summary() for s, w in writers.items()},
        "keep_labels": keep_labels,
        "skipped_count": len(skipped),
        "skipped": skipped,
    }
    for writer in writers.values():
        writer.remove_strays()
    storage.write_bytes(f"{out}/manifest.json", json.dumps(manifest, indent=2).encode())
    return ShardResult(out, manifest, reused=sum(w.reused for w in writers.values()))


def _remove_manifest(out: str) -> None:
    fs, base = pafs.FileSystem.from_uri(out)
    if fs.get_file_info(f"{base}/manifest.json").type == pafs.FileType.File:
        fs.delete_file(f"{base}/manifest.json")
