"""Data: image sources, image decoding, and reading the Parquet shards that ``rayssl shard`` writes.

Shards hold ``image`` (encoded bytes: the original JPEG where it could be kept, else JPEG or PNG),
``label`` (int64, -1 = none), ``id`` (str), ``height`` and ``width`` (int32), with ``manifest.json``
beside them (``image_size: null`` when the images keep their own sizes). ``pipelines.shard`` writes them, decoding and checking
every image once, so that training never meets a broken file; ``pipelines.stream`` streams
them through Ray Data.

Nothing here relies on the rows' order: a subset of a split is a stratified sample across all of
it (``read_sample``), never its first rows, because a split may come class by class.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from pipelines.config import absolute as resolve_uri  # Ray workers chdir elsewhere
from pipelines.sampling import stratified_sample

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
SCHEMA = pa.schema(
    [("image", pa.binary()), ("label", pa.int64()), ("id", pa.string()), ("height", pa.int32()), ("width", pa.int32())]
)
# Folder images keep their own size, the shorter side capped here (``rayssl shard --max-size``): FFCV's
# ImageNet files cap the side at 400-500 px, which keeps 224 px crops sharp and the shards small.
DEFAULT_MAX_SIZE = 512
JPEG_QUALITY = 90  # RGB photos that had to be re-encoded (resized, or not JPEG)
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


@dataclass(frozen=True)
class EncodedImage:
    """One image as a shard stores it: its bytes, size in pixels, and how the bytes were made."""

    data: bytes
    height: int
    width: int
    kind: str  # "original" (the file's own JPEG bytes), "jpeg" or "png" (encoded here)


def encode_image_file(data: bytes, mode: str, size: int | None = None, max_size: int = DEFAULT_MAX_SIZE) -> EncodedImage:
    """Decode and check one image file's bytes, then encode it for a shard; ``ValueError`` with a reason when it cannot.

    ``size``: a ``size`` x ``size`` centre crop of the image resized to that shorter side, as PNG (fixed small
    images). Otherwise the image keeps its own size, the shorter side capped at ``max_size`` (0: no cap). A JPEG
    already in ``mode`` that needs no resizing keeps its original bytes; any other image is encoded once: JPEG
    (quality 90) for RGB photos, PNG where lossless matters (grey images, palettes, alpha).
    """
    if not data:
        raise ValueError("zero-byte file")
    width, height, declared_format, declared_mode = _read_pil(lambda: _declared(data))
    if width * height > MAX_IMAGE_PIXELS:  # checked on the header, before any pixel is allocated
        raise ValueError(f"declares {width}x{height} pixels, over the {MAX_IMAGE_PIXELS} pixel limit (a decompression bomb?)")
    if size is None and declared_format == "JPEG" and declared_mode == mode and not (max_size and min(width, height) > max_size):
        # kept as its own bytes: decoded only to check it, at 1/8 scale (every coefficient is still read, so a
        # truncated or corrupt file fails as at full size; the inverse DCT is skipped: ~3x faster)
        _read_pil(lambda: _check_at_eighth_scale(data, mode))
        return EncodedImage(data, height, width, "original")
    img, file_format, file_mode = _read_pil(lambda: _decode(data, mode))
    if size is not None:
        return EncodedImage(encode_png(np.asarray(_resize_center_crop(img, size))), size, size, "png")
    resized = bool(max_size) and min(img.size) > max_size
    if resized:
        img = _cap_shorter_side(img, max_size)
    elif file_format == "JPEG" and file_mode == mode:
        return EncodedImage(data, img.height, img.width, "original")
    buf = io.BytesIO()
    if mode == "RGB" and file_mode in ("RGB", "CMYK", "YCbCr"):
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        kind = "jpeg"
    else:
        img.save(buf, format="PNG", compress_level=1)
        kind = "png"
    return EncodedImage(buf.getvalue(), img.height, img.width, kind)


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


def _declared(data: bytes) -> tuple[int, int, str, str]:
    """Width, height, format and mode, from the header alone."""
    with Image.open(io.BytesIO(data)) as img:
        return img.width, img.height, img.format, img.mode


def _check_at_eighth_scale(data: bytes, mode: str) -> None:
    """Decode a JPEG at its smallest draft scale, which reads all of it: raises as a full decode would."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft(mode, (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()


def _decode(data: bytes, mode: str) -> tuple[Image.Image, str, str]:
    """The fully decoded image in ``mode``, and the file's format and mode."""
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # checksums that load() skips, such as PNG chunk CRCs
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode == "P" and "transparency" in img.info:
            file_mode = "PA"  # a palette with transparency: as lossless as alpha
        else:
            file_mode = img.mode
        return _convert(img, mode), img.format, file_mode


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


def _cap_shorter_side(img: Image.Image, max_size: int) -> Image.Image:
    """``img`` resized (antialiased) so that its shorter side is ``max_size``, the aspect ratio kept."""
    width, height = img.size
    scale = max_size / min(width, height)
    new = (max(max_size, round(width * scale)), max(max_size, round(height * scale)))
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def decode_image_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data batch of encoded images of one size -> ``image`` uint8 (N, H, W, C); other columns pass through.

    A row that does not decode (a shard damaged after ``rayssl shard`` checked it) raises
    ``DataError`` naming the row's ``id`` when the batch carries one.
    """
    images = []
    for i, data in enumerate(batch["image"]):
        try:
            images.append(np.asarray(Image.open(io.BytesIO(data))))
        except Exception as err:
            raise damaged_row(batch, i, err) from None
    stacked = np.stack(images)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    out = {k: v for k, v in batch.items() if k != "image"}
    out["image"] = stacked
    return out


def damaged_row(batch: dict, i: int, err: Exception) -> DataError:
    """The one-line error for row ``i`` of a batch whose image bytes do not decode."""
    row = f"image {batch['id'][i]!r}" if "id" in batch else f"row {i} of a batch"
    return DataError(f"{row}: cannot decode its image bytes ({type(err).__name__}); the shard is damaged: re-run 'rayssl shard'")


# A paper's evaluation transform: the shorter side resized to 8/7 of the crop (256 for 224), then a centre crop.
EVAL_RESIZE_RATIO = 8 / 7


def eval_crop(data: bytes, crop: int, mode: str) -> np.ndarray:
    """The probe's view of one encoded image of any size: shorter side to ``crop`` x 8/7, centre ``crop`` x ``crop``."""
    img = Image.open(io.BytesIO(data))
    resize = round(crop * EVAL_RESIZE_RATIO)
    scale = resize / min(img.size)
    if img.format == "JPEG" and scale <= 0.5:
        img.draft(mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
    img = img.convert(mode)
    scale = resize / min(img.size)
    # the centre crop's box in the (draft-decoded) image, resized straight to the crop: one resampling
    side = crop / scale
    left, top = (img.width - side) / 2, (img.height - side) / 2
    return as_hwc(img.resize((crop, crop), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)))


def eval_batch(batch: dict, crop: int, mode: str) -> np.ndarray:
    """``eval_crop`` of every encoded image of a batch: uint8 (N, crop, crop, C)."""
    images = []
    for i, data in enumerate(batch["image"]):
        try:
            images.append(eval_crop(data, crop, mode))
        except Exception as err:
            raise damaged_row(batch, i, err) from None
    return np.stack(images) if images else np.empty((0, crop, crop, 1 if mode == "L" else 3), np.uint8)


def as_hwc(img: Image.Image) -> np.ndarray:
    """A PIL image as uint8 (H, W, C), grey images with one channel."""
    array = np.asarray(img)
    return array[..., None] if array.ndim == 2 else array


# ---------------------------------------------------------------- reading shards


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


def read_sample(shards: str, split: str, max_images: int | None = None, labeled_only: bool = False) -> pa.Table:
    """Rows of one split (``image``, ``label``, ``id``): all of them, or ``max_images`` drawn across the whole split.

    The sample is seeded and stratified by label (``sampling.stratified_sample``; unlabeled rows are a
    stratum of their own), never the first rows: a split may come class by class (shards written by
    another tool, or an older rayssl). To choose, only the ``label`` column is read; then only the row
    groups that hold chosen rows, one file at a time, keeping just those rows. Rows come in file order.
    """
    import pyarrow.dataset as pads

    uri = split_uri(shards, split)
    try:
        fragments = sorted(pads.dataset(uri, format="parquet").get_fragments(), key=lambda f: f.path)
        file_labels = [f.to_table(columns=["label"]).column("label").to_numpy() for f in fragments]
    except (pa.ArrowInvalid, FileNotFoundError, OSError) as err:
        raise DataError(f"{uri}: cannot read shards ({err}); re-run 'rayssl shard'") from None
    labels = np.concatenate(file_labels) if file_labels else np.empty(0, np.int64)
    rows = np.flatnonzero(labels >= 0) if labeled_only else np.arange(len(labels))
    if max_images is not None:
        rows = rows[stratified_sample(labels[rows], max_images)]
    tables, start = [], 0
    for fragment, in_file in zip(fragments, file_labels, strict=True):
        wanted = rows[(rows >= start) & (rows < start + len(in_file))] - start
        start += len(in_file)
        if len(wanted):
            tables.append(_take_rows(fragment, wanted))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def _take_rows(fragment, rows: np.ndarray) -> pa.Table:
    """Rows ``rows`` (sorted, within the file) of one Parquet file, reading only the row groups that hold them."""
    fragment.ensure_complete_metadata()
    bounds = np.cumsum([0] + [group.num_rows for group in fragment.row_groups])
    group_of_row = np.searchsorted(bounds, rows, side="right") - 1
    groups = np.unique(group_of_row)
    # where each chosen group starts in the table of the chosen groups alone
    group_starts = np.concatenate([[0], np.cumsum(np.diff(bounds)[groups])[:-1]])
    table = fragment.subset(row_group_ids=groups.tolist()).to_table(columns=["image", "label", "id"])
    return table.take(group_starts[np.searchsorted(groups, group_of_row)] + rows - bounds[group_of_row])


def load_images(shards: str, split: str, max_images: int | None, crop: int | None = None) -> np.ndarray:
    """Decoded images (N, H, W, C) of one split, labeled or not (label-free probes): ``read_sample``'s rows,
    as the probes see them (``decode_for_probes``)."""
    table = read_sample(shards, split, max_images)
    if table.num_rows == 0:
        raise DataError(f"{split_uri(shards, split)}: no images; re-run 'rayssl shard'")
    return decode_for_probes(table, read_manifest(shards), crop)


def decode_for_probes(table: pa.Table, manifest: dict, crop: int | None) -> np.ndarray:
    """The images of a table of shard rows as an evaluation sees them: uint8 (N, H, W, C).

    Shards of one image size: the images as they are (CIFAR-style evaluation). Shards whose images keep
    their own sizes: each resized to a shorter side of ``crop`` x 8/7 and centre-cropped to ``crop``
    (``eval_crop``: 256 then 224, as the papers evaluate on ImageNet).
    """
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("image", "id")}
    if manifest.get("image_size"):
        return decode_image_batch(batch)["image"]
    if crop is None:
        raise ValueError("images of their own sizes need the crop size to probe them at")
    return eval_batch(batch, crop, manifest["mode"])


def load_labeled(
    shards: str, split: str, max_images: int | None = None, crop: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded labeled images (N, H, W, C) and labels of one split, for the probes: ``read_sample``'s labeled rows,
    as the probes see them (``decode_for_probes``, at ``crop`` px for photos of their own sizes).

    ``max_images`` are drawn across the whole split, every class in proportion.
    """
    uri = split_uri(shards, split)
    table = read_sample(shards, split, max_images, labeled_only=True)
    if table.num_rows == 0:
        raise DataError(
            f"{uri}: no labeled images; probes need a labeled set: set probe.shards to shards of a folder with class sub-folders"
        )
    return decode_for_probes(table, read_manifest(shards), crop), table.column("label").to_numpy()
