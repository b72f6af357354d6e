"""Data: write validated Parquet shards (`rayssl shard`) and stream them through Ray Data.

Shards hold ``image`` (PNG bytes), ``label`` (int64, -1 = none) and ``id`` (str),
with ``manifest.json`` beside them. Images are decoded and checked once here, at
shard time, so that training never meets a broken file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("id", pa.string())])
# Refuse images that declare more pixels than this before decoding them (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000


class DataError(ValueError):
    """Bad input the user can fix; the message names the file or path."""


# ---------------------------------------------------------------- sources


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip or plain."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]  # bytes 0-2: zero, zero, dtype code (0x08 = uint8)
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000): uint8 (N, 28, 28) images and labels."""
    prefix = "train" if split == "train" else "t10k"
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.is_file():
        raise DataError(
            f"{images_path}: Fashion-MNIST not found; install it with 'apt-get install -y dataset-fashion-mnist' "
            "(make demo does this), or shard any image folder with 'rayssl shard PATH --out DIR'"
        )
    return read_idx(images_path), read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)


# ---------------------------------------------------------------- images


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_image(path: Path, mode: str, size: int | None) -> Image.Image:
    """Open, fully decode and convert one image; raises ``ValueError`` with a reason when it cannot."""
    if path.stat().st_size == 0:
        raise ValueError("zero-byte file")
    width, height = _read_pil(lambda: _declared_size(path))
    if width * height > MAX_IMAGE_PIXELS:  # checked on the header, before any pixel is allocated
        raise ValueError(f"declares {width}x{height} pixels, over the {MAX_IMAGE_PIXELS} pixel limit (a decompression bomb?)")
    img = _read_pil(lambda: _decode(path, mode))
    return img if size is None else _resize_center_crop(img, size)


def _read_pil(step):
    """Run one PIL step; PIL raises many exception types for broken files, all become one ``ValueError`` reason."""
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit; ours is lower and refuses such images with their size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return step()
    except Image.DecompressionBombError as err:
        # Over twice PIL's limit, PIL refuses while opening, before our check sees the size.
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = found.group(1) if found else "too many"
        raise ValueError(f"declares {pixels} pixels, over the {MAX_IMAGE_PIXELS} pixel limit (a decompression bomb?)") from None
    except Exception as err:
        raise ValueError(f"cannot decode ({type(err).__name__}: {err})") from None


def _declared_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def _decode(path: Path, mode: str) -> Image.Image:
    with Image.open(path) as img:
        img.verify()  # checksums that load() skips, such as PNG chunk CRCs
    with Image.open(path) as img:
        img.load()
        return _convert(img, mode)


def _convert(img: Image.Image, mode: str) -> Image.Image:
    if img.mode.startswith("I"):
        # 16-bit grayscale (PNG opens as I;16, 16-bit PGM as I): scale 0..65535 to 0..255; convert() would clip.
        scaled = np.clip(np.round(np.asarray(img, dtype=np.float64) / 257), 0, 255)
        img = Image.fromarray(scaled.astype(np.uint8))
    if img.mode in ("P", "PA") and mode == "RGB":
        img = img.convert("RGBA")  # a palette's transparency is applied on the way through RGBA
    return img.convert(mode)


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    width, height = img.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    img = img.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_png_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data batch of PNG bytes -> ``image`` uint8 (N, H, W, C); other columns pass through.

    A row that does not decode (a shard damaged after ``rayssl shard`` checked it) raises
    ``DataError`` naming the row's ``id`` when the batch carries one.
    """
    images = []
    for i, data in enumerate(batch["image"]):
        try:
            images.append(np.asarray(Image.open(io.BytesIO(data))))
        except Exception as err:
            row = f"image {batch['id'][i]!r}" if "id" in batch else f"row {i} of a batch"
            raise DataError(
                f"{row}: cannot decode its PNG bytes ({type(err).__name__}); the shard is damaged: re-run 'rayssl shard'"
            ) from None
    stacked = np.stack(images)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    out = {k: v for k, v in batch.items() if k != "image"}
    out["image"] = stacked
    return out


# ---------------------------------------------------------------- writing shards


@dataclass
class _SplitWriter:
    """Writes one split's rows into numbered Parquet files, each renamed into place when complete."""

    out_dir: Path
    rows_per_shard: int
    rows: list[tuple[bytes, int, str]] = field(default_factory=list)
    written: int = 0
    labeled: int = 0
    files: list[str] = field(default_factory=list)

    def add(self, png: bytes, label: int, image_id: str) -> None:
        self.rows.append((png, label, image_id))
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        images, labels, ids = zip(*self.rows, strict=True)
        table = pa.table({"image": list(images), "label": list(labels), "id": list(ids)}, schema=SCHEMA)
        name = f"part-{len(self.files):05d}.parquet"
        tmp = self.out_dir / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.out_dir / name)  # a reader never sees a half-written shard
        self.files.append(name)
        self.written += len(self.rows)
        self.labeled += sum(1 for label in labels if label >= 0)
        self.rows = []

    def summary(self) -> dict:
        return {"rows": self.written, "labeled": self.labeled, "shards": self.files}


@dataclass
class ShardResult:
    out_dir: Path
    manifest: dict

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

    out = Path(out)
    writers = {s: _SplitWriter(out / s, rows_per_shard) for s in ("train", "test")}
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return ShardResult(out, manifest)


# ---------------------------------------------------------------- reading shards


def resolve_uri(path_or_uri: str) -> str:
    """Absolute local path, or the URI unchanged (s3://, gs://, ...): Ray workers chdir elsewhere."""
    return path_or_uri if "://" in path_or_uri else str(Path(path_or_uri).expanduser().resolve())


def read_manifest(shards: str) -> dict:
    uri = resolve_uri(shards)
    fs, base = pafs.FileSystem.from_uri(uri)
    try:
        with fs.open_input_stream(f"{base}/manifest.json") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        raise DataError(f"{uri}/manifest.json: not found; write shards first with 'rayssl shard SOURCE --out {shards}'") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{uri}/manifest.json: not valid JSON ({err}); re-run 'rayssl shard'") from None


def check_shards(shards: str, manifest: dict) -> None:
    """Open every Parquet file the manifest lists (footer and schema only) and check rayssl's columns.

    Cheap enough to run before Ray starts, so that a missing, corrupt or foreign
    shard fails in one line instead of inside a Ray Data task.
    """
    uri = resolve_uri(shards)
    fs, base = pafs.FileSystem.from_uri(uri)
    redo = f"re-run 'rayssl shard SOURCE --out {shards}'"
    for split, summary in manifest.get("splits", {}).items():
        for name in summary.get("shards", []):
            path = f"{base}/{split}/{name}"
            try:
                schema = pq.read_schema(path, filesystem=fs)
            except FileNotFoundError:
                raise DataError(f"{uri}/{split}/{name}: listed in manifest.json but missing; {redo}") from None
            except (pa.ArrowException, OSError) as err:
                reason = str(err).splitlines()[0]
                raise DataError(f"{uri}/{split}/{name}: not a readable Parquet file ({reason}); {redo}") from None
            problem = _schema_problem(schema)
            if problem:
                raise DataError(f"{uri}/{split}/{name}: not a rayssl shard ({problem}); {redo}")


def _schema_problem(schema: pa.Schema) -> str | None:
    """What is wrong with a shard's columns, or None: image must be binary, label an integer, id a string."""
    wanted = {
        "image": (pa.types.is_binary, pa.types.is_large_binary),
        "label": (pa.types.is_integer,),
        "id": (pa.types.is_string, pa.types.is_large_string),
    }
    for column, accepts in wanted.items():
        if column not in schema.names:
            return f"no '{column}' column; it has {', '.join(schema.names) or 'no columns'}"
        kind = schema.field(column).type
        if not any(accept(kind) for accept in accepts):
            return f"column '{column}' is {kind}"
    return None


def split_uri(shards: str, split: str) -> str:
    return f"{resolve_uri(shards)}/{split}"


def labeled_rows(manifest: dict) -> dict[str, int]:
    """Labeled rows per split, as ``rayssl shard`` counted them: ``{"train": n, "test": m}``."""
    return {split: int(summary.get("labeled", 0)) for split, summary in manifest.get("splits", {}).items()}


def load_images(shards: str, split: str, max_images: int) -> np.ndarray:
    """The first ``max_images`` decoded images (N, H, W, C) of one split, labeled or not (label-free probes)."""
    import pyarrow.dataset as pads

    uri = split_uri(shards, split)
    try:
        table = pads.dataset(uri, format="parquet").head(max_images, columns=["image", "id"])
    except (pa.ArrowInvalid, FileNotFoundError, OSError) as err:
        raise DataError(f"{uri}: cannot read shards ({err}); re-run 'rayssl shard'") from None
    if table.num_rows == 0:
        raise DataError(f"{uri}: no images; re-run 'rayssl shard'")
    return decode_png_batch(_image_columns(table))["image"]


def _image_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """A table's ``image`` and ``id`` columns as a batch for ``decode_png_batch`` (the id names a bad row)."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("image", "id")}


def load_labeled(shards: str, split: str, max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decoded labeled images (N, H, W, C) and labels of one split, for the probes."""
    import pyarrow.dataset as pads

    uri = split_uri(shards, split)
    try:
        table = pads.dataset(uri, format="parquet").to_table(columns=["image", "label", "id"], filter=pads.field("label") >= 0)
    except (pa.ArrowInvalid, FileNotFoundError, OSError) as err:
        raise DataError(f"{uri}: cannot read shards ({err}); re-run 'rayssl shard'") from None
    if max_images is not None:
        table = table.slice(0, max_images)
    if table.num_rows == 0:
        raise DataError(
            f"{uri}: no labeled images; probes need a labeled set: set probe.shards to shards of a folder with class sub-folders"
        )
    return decode_png_batch(_image_columns(table))["image"], table.column("label").to_numpy()
