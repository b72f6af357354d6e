"""The one home of rayssl's checkpoint format: one ``checkpoint.pt`` per saved epoch.

Ray Train keeps the folder that holds it; a run logs it to MLflow as ``checkpoint/checkpoint.pt``.
Every other module saves, loads and reads the epoch of a checkpoint through here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.data import DataError

FILE_NAME = "checkpoint.pt"
ARTIFACT_DIR = "checkpoint"  # where a run's final checkpoint lives among its MLflow artifacts
ARTIFACT_PATH = f"{ARTIFACT_DIR}/{FILE_NAME}"
MANIFEST_KEYS = ("mode", "channels", "image_size", "classes")  # what a checkpoint needs of its shards' manifest


def save(
    folder: str | Path, *, model, optimizer, epoch: int, config: dict, manifest: dict, run_id: str, uri: str, pending
) -> Path:
    """Write the checkpoint of 0-based ``epoch`` into ``folder``; returns the file."""
    state = {
        "pending_metrics": pending,  # metrics the tracking server has not taken yet; the driver sends them
        "run_id": run_id,  # so `rayssl probe CHECKPOINT` can log to the run that made it
        "tracking_uri": uri,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "config": config,
        "manifest": {k: manifest[k] for k in MANIFEST_KEYS},
    }
    path = Path(folder) / FILE_NAME
    torch.save(state, path)
    return path


def uri_of(saved) -> str:
    """A Ray Train checkpoint's location as one string that names its filesystem: ``s3://bucket/...`` on
    object storage, a local path otherwise. (``Checkpoint.path`` alone drops the scheme, and a
    ``Checkpoint`` rebuilt from it would look on the local disk.)"""
    kind = getattr(saved.filesystem, "type_name", "local")
    return saved.path if kind == "local" else f"{kind}://{saved.path}"


def under_storage(path: str, storage_root: str) -> str:
    """A checkpoint path that Ray reported without its scheme (Tune's ``checkpoint_path`` metric), as a
    location under ``storage_root``: ``s3://...`` again when the storage is an object store."""
    if "://" in path or "://" not in storage_root:
        return path
    return f"{storage_root.split('://', 1)[0]}://{path}"


def file_in(path: str | Path) -> Path:
    """The checkpoint file of ``path``: the file itself or the folder holding it."""
    p = Path(path)
    return p / FILE_NAME if p.is_dir() else p


def load(path: str | Path) -> dict:
    """A rayssl checkpoint (a ``checkpoint.pt`` file or the folder holding it), loaded safely."""
    p = file_in(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no rayssl checkpoint here; give a checkpoint folder from a pretraining run")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  truncated, foreign or not a torch file: one line, not a traceback
        reason = f"not a readable rayssl checkpoint ({type(err).__name__})"
        raise DataError(f"{p}: {reason}; give a checkpoint.pt from a pretraining run") from None
    if not isinstance(state, dict) or not {"model", "config", "manifest"} <= set(state):
        raise DataError(f"{p}: a torch file but not a rayssl checkpoint (no model, config, manifest); give one from a run")
    return state


def completed_epochs(path: str | Path) -> int:
    """How many epochs the checkpoint has trained (its 0-based epoch + 1)."""
    return int(load(path)["epoch"]) + 1


def is_remote_checkpoint(source: str) -> bool:
    """True for a registered model (``models:/...``) or an MLflow run id that is not also a local path."""
    if Path(source).exists():
        return False
    return source.startswith("models:/") or (len(source) == 32 and all(ch in "0123456789abcdef" for ch in source))


def local_copy(uri: str, source: str, dst: str | Path) -> Path:
    """A local checkpoint for ``source``: a path as it is, else an MLflow run id or a registered model
    (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), whose run's checkpoint artifact is downloaded."""
    if not is_remote_checkpoint(source):
        return Path(source)
    from pipelines import tracking

    run_id = tracking.registered_run_id(uri, source) if source.startswith("models:/") else source
    return tracking.Run(uri, run_id).download_artifact(ARTIFACT_PATH, dst)
