"""Blob stores: one small interface, a local-directory implementation and an S3-compatible one (``s3.py``).

Keys are relative paths (``uploads/42/abc``). Every write is atomic (a temporary name then a rename,
a single PUT, or a multipart upload that only becomes visible when it completes) and hashes what it
writes, so a copy is checksummed on arrival without reading it twice. A write given the digest it
must have (a :class:`~migrator.blobs.digest.Digest`: sha256, sha1 or md5; a bare string is a sha256
in hex) stores nothing when the bytes do not hash to it. Every write also hashes sha256, what the
stores keep and compare natively.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from migrator.atomic_file import replacing
from migrator.blobs.digest import SHA256, Digest, as_digest, new_hash
from migrator.errors import BlobMissing, CellUnavailable, ConfigError

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BlobStat:
    key: str
    size: int
    # The object's sha256 when the store knows it without reading the bytes (a checksum the S3 server
    # computed, or one the migrator verified while writing); None: only reading it back tells.
    sha256: str | None = None


@dataclass
class Received:
    """What copying one object into a store did."""

    written: int = 0  # bytes written to the target (0: an identical object was already there)
    read: int = 0  # object bytes that passed through this process (0 for a server-side copy)
    skipped: bool = False
    server_side: bool = False
    sha256: str | None = None  # of what was written, when it was hashed here


@dataclass
class SourceObject:
    """An object open for reading: its stream, its size when known, attributes worth carrying over."""

    stream: BinaryIO
    size: int | None
    attrs: dict = field(default_factory=dict)


class DigestMismatch(Exception):
    """The bytes read do not hash to the digest the caller expected; nothing was stored.

    ``digest``: what the bytes hash to, in hex, with ``algorithm`` (the expected digest's)."""

    def __init__(self, key: str, digest: str, size: int, algorithm: str = SHA256):
        super().__init__(f"{key}: {algorithm} {digest} ({size} bytes)")
        self.key, self.digest, self.size, self.algorithm = key, digest, size, algorithm


class _Wrapper(io.RawIOBase):
    """A read-only stream over another one (``read`` is the subclass's); closing it closes that one."""

    _stream: BinaryIO

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


class CountingStream(_Wrapper):
    """A read-only stream that tells ``on_read`` how many bytes each read returned."""

    def __init__(self, stream, on_read: Callable[[int], None]):
        super().__init__()
        self._stream, self._on_read = stream, on_read

    def read(self, n: int | None = -1) -> bytes:
        data = self._stream.read() if n is None or n < 0 else self._stream.read(n)
        if data:
            self._on_read(len(data))
        return data


class HashingReader(_Wrapper):
    """Reads a stream through, hashing (sha256, and the expected digest's algorithm) and counting the
    bytes; ``read(n)`` returns ``n`` bytes unless the stream ends (so a multipart upload reading parts
    from it gets full-sized parts).

    With ``expect`` (a :class:`Digest`, or a sha256 in hex) it refuses to report the end of the stream
    (raises :class:`DigestMismatch` instead) when the bytes did not hash to it, so a writer that
    completes only at the end of its stream (a multipart upload, a rename) never completes a wrong
    object. ``check=False``: hash for ``expect``'s algorithm, but leave the comparison to the caller
    (:meth:`mismatch`).
    """

    def __init__(self, stream: BinaryIO, key: str = "", expect: Digest | str | None = None, *, check: bool = True):
        super().__init__()
        self._stream, self.key, self.expect, self._check_at_end = stream, key, as_digest(expect), check
        self._digest = hashlib.sha256()
        self._other = new_hash(self.expect.algorithm) if self.expect and self.expect.algorithm != SHA256 else None
        self.size = 0

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            data = self._stream.read()
            at_end = True
        else:
            parts, got = [], 0
            while got < n:
                block = self._stream.read(n - got)
                if not block:
                    break
                parts.append(block)
                got += len(block)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            at_end = got < n
        if data:
            self._digest.update(data)
            if self._other is not None:
                self._other.update(data)
            self.size += len(data)
        if at_end and self._check_at_end:
            self._check()
        return data

    def hexdigest(self) -> str:
        """The sha256 of what was read, in hex."""
        return self._digest.hexdigest()

    def digest(self) -> Digest | None:
        """What was read, hashed with the expected digest's algorithm (None without ``expect``)."""
        if self.expect is None:
            return None
        return Digest(self.expect.algorithm, (self._other or self._digest).hexdigest())

    def mismatch(self) -> DigestMismatch | None:
        """The :class:`DigestMismatch` to raise when what was read does not hash to ``expect``."""
        got = self.digest()
        if got is not None and got.hex != self.expect.hex:
            return DigestMismatch(self.key, got.hex, self.size, got.algorithm)
        return None

    def _check(self) -> None:
        problem = self.mismatch()
        if problem is not None:
            raise problem


class BlobStore(ABC):
    """What the migrator needs from a cell's object storage."""

    name: str = "blobs"

    def __init__(self) -> None:
        self._read_lock = threading.Lock()
        self.bytes_read = 0  # object bytes this process read from the store (copies and read-backs)

    def _count_read(self, n: int) -> None:
        with self._read_lock:
            self.bytes_read += n

    @abstractmethod
    def stat(self, key: str) -> BlobStat | None:
        """Size (and sha256 when known without reading) of the object, or None if it does not exist."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary stream of the object; :class:`BlobMissing` if absent."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, *, expect: Digest | str | None = None) -> tuple[str, int]:
        """Store the stream under ``key`` atomically; return (sha256 hex, size). With ``expect``, bytes
        that hash otherwise are never stored (:class:`DigestMismatch`)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete; True if something was deleted."""

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Every key in the store."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`CellUnavailable` if the store does not answer or is not writable."""

    def describe(self) -> str:
        return self.name

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def put_bytes(self, key: str, data: bytes) -> tuple[str, int]:
        return self.put_stream(key, io.BytesIO(data))

    def read_sha256(self, key: str) -> str:
        """The sha256 of the object, read back through this process."""
        return self.read_digest(key, SHA256).hex

    def read_digest(self, key: str, algorithm: str = SHA256) -> Digest:
        """The object's digest with ``algorithm``, read back through this process."""
        h = new_hash(algorithm)
        with self.open(key) as stream:
            for block in iter(lambda: stream.read(CHUNK), b""):
                h.update(block)
        return Digest(algorithm, h.hexdigest())

    def sha256(self, key: str, stat: BlobStat | None = None) -> str:
        """The object's sha256: known to the store, else read back."""
        stat = stat if stat is not None else self.stat(key)
        if stat is not None and stat.sha256:
            return stat.sha256
        return self.read_sha256(key)

    def digest(self, key: str, algorithm: str = SHA256, stat: BlobStat | None = None) -> Digest:
        """The object's digest with ``algorithm``: a sha256 the store knows, else read back."""
        if algorithm == SHA256:
            return Digest(SHA256, self.sha256(key, stat))
        return self.read_digest(key, algorithm)

    def holds(self, key: str, expect: Digest | str) -> bool:
        """True when the store has an object under ``key`` whose bytes hash to ``expect``."""
        expect = as_digest(expect)
        present = self.stat(key)
        if present is None:
            return False
        return self.digest(key, expect.algorithm, present).hex == expect.hex

    def receive(self, src: BlobStore, key: str, *, expect: Digest | str | None = None, size: int | None = None,
                fresh: bool = False) -> Received:
        """Copy ``key`` from ``src`` into this store unless an identical object is here already.

        ``fresh``: the caller believes the target does not have the object yet (a first attempt); a store
        may then write first and look only when the write finds something there. Stores override this.
        """
        expect = as_digest(expect)
        if expect and self.holds(key, expect):
            return Received(skipped=True)
        with src.open(key) as stream:
            digest, written = self.put_stream(key, stream, expect=expect)
        return Received(written=written, read=written, sha256=digest)

    def open_source(self, key: str) -> SourceObject:
        """The object open for reading, with its size when the store knows it at once."""
        return SourceObject(self.open(key), None)

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
        super().__init__()
        self.root = Path(root)
        self.name = name

    def describe(self) -> str:
        return f"{self.name} ({self.root})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_safe_relpath(key).parts)

    def stat(self, key: str) -> BlobStat | None:
        try:
            return BlobStat(key, self._path(key).stat().st_size)
        except FileNotFoundError:
            return None

    def open(self, key: str) -> BinaryIO:
        try:
            return CountingStream(open(self._path(key), "rb"), self._count_read)  # noqa: SIM115 - caller closes
        except FileNotFoundError:
            raise BlobMissing(f"blob {key!r} is missing from {self.name}", "restore it or fix the row") from None

    def open_source(self, key: str) -> SourceObject:
        stream = self.open(key)
        return SourceObject(stream, os.fstat(stream._stream.fileno()).st_size)

    def put_stream(self, key: str, stream: BinaryIO, *, expect: Digest | str | None = None) -> tuple[str, int]:
        reader = HashingReader(stream, key, expect, check=False)
        with replacing(self._path(key), prefix=".incoming-") as out:  # a half-written object never shows
            for block in iter(lambda: reader.read(CHUNK), b""):
                out.write(block)
            problem = reader.mismatch()
            if problem is not None:
                raise problem
        return reader.hexdigest(), reader.size

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


# One store object per cell and configuration in each process: an S3 store holds a boto3 client (its
# connection pool) and a transfer manager (threads), which are costly to build for every unit. The
# process id is part of the key, so a forked worker child never uses its parent's connections.
_STORES: dict[tuple, BlobStore] = {}
_STORES_LOCK = threading.Lock()


def open_store(settings, cell: str) -> BlobStore:
    """The blob store of a configured cell."""
    cfg = settings.cell(cell).blobs
    name = f"cell {cell!r} blob store"
    if cfg.kind == "local":
        path = settings.resolve_path(cfg.path) if cfg.path else settings.resolve_path(f"blobs/{cell}")
        return LocalBlobStore(path, name=name)
    if not cfg.bucket:
        raise ConfigError(f"cells.{cell}.blobs.bucket is required for kind s3", "set the bucket name")
    key = (os.getpid(), name, cfg.model_dump_json())
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            # deferred: boto3 is slow to import and only S3 stores need it
            from migrator.blobs.s3 import S3BlobStore

            store = _STORES[key] = S3BlobStore.from_config(cfg, name=name)
    return store


def same_store(a: BlobStore, b: BlobStore) -> bool:
    """True when two configured stores are one and the same place (never copy or delete then)."""
    # deferred: boto3 is slow to import and only S3 stores need it
    from migrator.blobs.s3 import S3BlobStore

    if isinstance(a, LocalBlobStore) and isinstance(b, LocalBlobStore):
        return a.root.resolve() == b.root.resolve()
    if isinstance(a, S3BlobStore) and isinstance(b, S3BlobStore):
        return (a.bucket, a.prefix, a.endpoint) == (b.bucket, b.prefix, b.endpoint)
    return False


def __getattr__(name: str):
    # ``from migrator.blobs.store import S3BlobStore`` keeps working; the class lives in s3.py.
    if name == "S3BlobStore":
        # deferred: boto3 is slow to import and only S3 stores need it
        from migrator.blobs.s3 import S3BlobStore

        return S3BlobStore
    raise AttributeError(name)
