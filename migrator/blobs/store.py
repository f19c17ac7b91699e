"""Blob stores: one small interface, a local-directory implementation and an S3-compatible one.

Keys are relative paths (``uploads/42/abc``). Every write is atomic (a temporary name then a
rename, or a single PUT) and returns the sha256 of what was written, so a copy is checksummed on
arrival without reading it twice.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from migrator.errors import BlobMissing, CellUnavailable, ConfigError

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BlobStat:
    key: str
    size: int


class BlobStore(ABC):
    """What the migrator needs from a cell's object storage."""

    name: str = "blobs"

    @abstractmethod
    def stat(self, key: str) -> BlobStat | None:
        """Size of the object, or None if it does not exist."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary stream of the object; :class:`BlobMissing` if absent."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO) -> tuple[str, int]:
        """Store the stream under ``key`` atomically; return (sha256 hex, size)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete; True if something was deleted."""

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Every key in the store."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`CellUnavailable` if the store does not answer or is not writable."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def put_bytes(self, key: str, data: bytes) -> tuple[str, int]:
        import io

        return self.put_stream(key, io.BytesIO(data))

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self.open(key) as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                digest.update(block)
        return digest.hexdigest()

    def delete_many(self, keys: Iterable[str]) -> int:
        return sum(1 for k in keys if self.delete(k))


def _safe_relpath(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts or not key:
        raise ValueError(f"invalid blob key {key!r}: must be a relative path without '..'")
    return path


class LocalBlobStore(BlobStore):
    """Objects as files under one directory."""

    def __init__(self, root: str | os.PathLike, name: str = "blobs"):
        self.root = Path(root)
        self.name = name

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_safe_relpath(key).parts)

    def stat(self, key: str) -> BlobStat | None:
        try:
            return BlobStat(key, self._path(key).stat().st_size)
        except FileNotFoundError:
            return None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")  # noqa: SIM115 - caller closes
        except FileNotFoundError:
            raise BlobMissing(f"blob {key!r} is missing from {self.name}", "restore it or fix the row") from None

    def put_stream(self, key: str, stream: BinaryIO) -> tuple[str, int]:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: stream.read(CHUNK), b""):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return digest.hexdigest(), size

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def keys(self) -> Iterator[str]:
        if not self.root.exists():
            return
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith(".incoming-"):
                yield path.relative_to(self.root).as_posix()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(prefix=".probe-", dir=self.root):
                pass
        except OSError as exc:
            raise CellUnavailable(
                f"{self.name} ({self.root}) is not writable: {exc.strerror}",
                "check the blobs.path of the cell in the config and its permissions",
            ) from None


class S3BlobStore(BlobStore):
    """Objects in an S3-compatible bucket (boto3), under an optional prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, name: str = "blobs"):
        import boto3

        self.bucket, self.prefix, self.name = bucket, prefix.strip("/"), name
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def _key(self, key: str) -> str:
        rel = _safe_relpath(key).as_posix()
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def stat(self, key: str) -> BlobStat | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return BlobStat(key, int(head["ContentLength"]))

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise BlobMissing(f"blob {key!r} is missing from {self.name}", "restore it or fix the row") from None
            raise

    def put_stream(self, key: str, stream: BinaryIO) -> tuple[str, int]:
        # Spool to a temporary file so the checksum is known before the single atomic PUT.
        digest, size = hashlib.sha256(), 0
        with tempfile.TemporaryFile() as spool:
            for block in iter(lambda: stream.read(CHUNK), b""):
                digest.update(block)
                size += len(block)
                spool.write(block)
            spool.seek(0)
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=spool)
        return digest.hexdigest(), size

    def delete(self, key: str) -> bool:
        existed = self.stat(key) is not None
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return existed

    def keys(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(prefix):]

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - any failure means the store does not answer
            raise CellUnavailable(
                f"{self.name} (bucket {self.bucket!r}) does not answer: {exc}",
                "check blobs.bucket / blobs.endpoint_url of the cell and the S3 credentials",
            ) from None


def open_store(settings, cell: str) -> BlobStore:
    """The blob store of a configured cell."""
    cfg = settings.cell(cell).blobs
    name = f"cell {cell!r} blob store"
    if cfg.kind == "local":
        path = settings.resolve_path(cfg.path) if cfg.path else settings.resolve_path(f"blobs/{cell}")
        return LocalBlobStore(path, name=name)
    if not cfg.bucket:
        raise ConfigError(f"cells.{cell}.blobs.bucket is required for kind s3", "set the bucket name")
    return S3BlobStore(cfg.bucket, cfg.prefix, cfg.endpoint_url, cfg.region, name=name)


def same_store(a: BlobStore, b: BlobStore) -> bool:
    """True when two configured stores are one and the same place (never copy or delete then)."""
    if isinstance(a, LocalBlobStore) and isinstance(b, LocalBlobStore):
        return a.root.resolve() == b.root.resolve()
    if isinstance(a, S3BlobStore) and isinstance(b, S3BlobStore):
        return (a.bucket, a.prefix, a.client.meta.endpoint_url) == (b.bucket, b.prefix, b.client.meta.endpoint_url)
    return False
