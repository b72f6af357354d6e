"""Work that is the same for every trial of a search, done once and reused: decoded probe sets and baselines.

Every trial of `rayssl demo` or `rayssl tune` probes on the same labeled images, and most share one
architecture and seed. So the decoded probe sets, the raw-pixel baseline, the random-init encoder's
probe and the few-label from-scratch baseline are computed by the first trial that needs them and
read back by the others, from files under ``<tracking.runs_dir>/cache``. Trials run in separate
processes (Tune trial drivers), so the cache is on disk, not in memory.

A key names everything the result depends on: the probe set (its URI and manifest), the probe
settings, and for the encoder baselines a digest of the random-init weights themselves, so a
different backbone, method head, channel count or seed never reads another's numbers. Two trials
that miss at the same time both compute and write the same value (written by rename: never half a file).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

CACHE_FOLDER = "cache"


def cache_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / CACHE_FOLDER


def digest(*parts) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def weights_digest(module: nn.Module) -> str:
    """A hash of a module's parameters and buffers: equal only for the same architecture and initial weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def shared_metrics(folder: Path | None, name: str, key: str, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``compute()``'s metrics, from ``folder/<name>-<key>.json`` when an earlier trial wrote it (None: no cache)."""
    if folder is None:
        return compute()
    path = folder / f"{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    metrics = compute()
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps(metrics)))
    return metrics


def shared_arrays(
    folder: Path | None, name: str, key: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Like ``shared_metrics`` for arrays (decoded probe sets), in an uncompressed ``.npz``."""
    if folder is None:
        return compute()
    path = folder / f"{name}-{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {k: stored[k] for k in stored.files}
    arrays = compute()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _write_atomically(path, write)
    return arrays
