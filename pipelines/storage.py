"""Object storage (``s3://``, and other URIs pyarrow knows) beside local folders.

rayssl takes the endpoint and credentials as the ecosystem does: pyarrow, Ray Data and Ray Train
read ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION``;
MLflow's S3 artifact store reads ``MLFLOW_S3_ENDPOINT_URL``. Nothing here is rayssl-specific
configuration. What this module adds: a check that a bucket answers before Ray starts, in one line,
and a write that a reader never sees half done.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.data import DataError


class StorageError(DataError):
    """Object storage the user can fix: a missing bucket, refused credentials, an unreachable endpoint."""


def is_remote(path_or_uri: str | os.PathLike) -> bool:
    return "://" in str(path_or_uri) and not str(path_or_uri).startswith("file://")


def endpoint() -> str:
    """Where ``s3://`` goes: ``AWS_ENDPOINT_URL`` (MinIO, Ceph, a local server), else AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def _bucket_of(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


# pyarrow's S3 errors read "AWS Error ACCESS_DENIED during HeadBucket operation: ..."
_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)")
_REFUSED = {"ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID", "INVALID_CLIENT_TOKEN_ID"}


def _where(uri: str, field: str | None) -> str:
    """``s3://bucket (field)``: how each message names the bucket and the setting that points at it."""
    return f"{uri.split('://', 1)[0]}://{_bucket_of(uri)}" + (f" ({field})" if field else "")


def explain(uri: str, error: OSError | str, field: str | None) -> StorageError:
    """One line for an object-store error on ``uri`` (named by its config ``field``): what, and what to do."""
    code = _AWS_ERROR.search(str(error))
    code = code.group(1) if code else ""
    where = _where(uri, field)
    if code in _REFUSED:
        return StorageError(
            f"{where}: {endpoint()} refused the credentials ({code}); "
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the node's role) and the bucket's policy"
        )
    if code in {"NETWORK_CONNECTION", "UNKNOWN"} or "Couldn't connect" in str(error) or "curlCode" in str(error):
        return StorageError(
            f"{where}: cannot reach {endpoint()} ({code or 'connection failed'}); "
            "check AWS_ENDPOINT_URL and that the object store is up"
        )
    if code == "NO_SUCH_BUCKET":
        return missing_bucket(uri, field)
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return StorageError(f"{where}: {first}")


def missing_bucket(uri: str, field: str | None) -> StorageError:
    bucket = _where(uri, None)
    return StorageError(
        f"{_where(uri, field)}: no such bucket at {endpoint()}; create it (for example 'aws s3 mb {bucket}') or fix the name"
    )


def check_bucket(uri: str, field: str) -> None:
    """Fail in one line when ``uri``'s bucket is missing, the credentials are refused or the endpoint is down.

    Local paths pass: their own checks (manifest, folders) say more. Called before Ray starts.
    """
    if not is_remote(uri):
        return
    try:
        fs, _ = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(_bucket_of(uri))
    except OSError as err:
        raise explain(uri, err, field) from None
    except ValueError as err:  # an unknown scheme, or a malformed URI
        raise StorageError(f"{uri} ({field}): {err}") from None
    if info.type == pafs.FileType.NotFound:
        raise missing_bucket(uri, field)


def write_bytes(uri_or_path: str | Path, data: bytes | pa.Buffer) -> None:
    """Write a whole file that readers see complete or not at all.

    Object stores publish an object only when its upload completes; a local file is written under a
    temporary name and renamed into place.
    """
    target = str(uri_or_path)
    if is_remote(target):
        fs, path = pafs.FileSystem.from_uri(target)
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    _publish_local(Path(target), lambda tmp: tmp.write_bytes(data))


def write_parquet(uri_or_path: str | Path, table: pa.Table, **options) -> None:
    """Write ``table`` as one whole Parquet file (``pq.write_table`` options), as ``write_bytes`` publishes a file.

    A local file is written straight to its temporary name (3-4x faster than through a buffer in memory: a
    110 MB part, 0.07-0.11 against 0.31-0.47 s); an object store gets the file in one upload.
    """
    target = str(uri_or_path)
    if is_remote(target):
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, **options)
        write_bytes(target, buffer.getvalue())
        return
    _publish_local(Path(target), lambda tmp: pq.write_table(table, str(tmp), **options))


def _publish_local(local: Path, write) -> None:
    """``write(tmp)`` a temporary file beside ``local``, then rename it into place: readers never see half of it."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.parent / f".{local.name}.tmp"
    write(tmp)
    os.replace(tmp, local)


# pyarrow names the bucket in its S3 errors: "... for key 'a/b' in bucket 'name': AWS Error CODE ..."
_IN_BUCKET = re.compile(r"in bucket '([^']+)'.*?(AWS Error [A-Z_]+.*)$", re.M)


def object_store_cause(err: BaseException | None) -> StorageError | None:
    """The object-store failure behind ``err`` (Ray Train and Ray Data wrap it, often only as text), as one line.

    ``failures.one_line_errors`` raises it in place of the wrappers."""
    from pipelines.failures import error_chain

    for e in error_chain(err):
        if isinstance(e, StorageError):
            return e
        found = _IN_BUCKET.search(str(e))
        if found:
            return explain(f"s3://{found.group(1)}", found.group(2), None)
    return None
