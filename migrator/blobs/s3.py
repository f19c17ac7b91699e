"""An S3-compatible blob store (boto3): streamed multipart writes, server-side copies, checksums from the server.

How one object gets into a bucket (:meth:`S3BlobStore.receive`), ADR 0016:

- both stores behind one endpoint (and one credential profile): a server-side copy, no object byte
  through the worker. ``CopyObject`` up to 5 GB with ``ChecksumAlgorithm=SHA256``, so the server
  returns the sha256 of what it wrote; above that, ``UploadPartCopy`` parts (boto3's transfer manager)
  and the sha256 read back (a multipart object only has a checksum of its parts' checksums);
- an object smaller than the multipart threshold: read into memory while hashing, compared with the
  row's checksum *before* anything is sent, then one ``PutObject`` carrying that sha256
  (``x-amz-checksum-sha256``, which S3 verifies on arrival and keeps). On a first attempt it is sent
  with ``If-None-Match: *``, so a fresh copy costs one GET and one PUT; an object already there answers
  412 and is compared instead;
- a larger object: streamed from the source through a :class:`HashingReader` into the transfer
  manager's multipart upload (parts in parallel, at most ``max_concurrency`` chunks in memory, no local
  spool). The reader refuses to end the stream when the bytes do not hash to the row's checksum, so the
  upload is aborted and never completed: a multipart object only becomes visible when it completes,
  so a half-written or wrong object is never there to be taken as copied. Its verified sha256 is kept
  in the object's metadata (``cells-migrator-sha256``), written only by this path.

Transient errors (5xx, throttling, connection refused or reset, timeouts) are retried with tenacity:
each call here, and each whole object copy in the copier. botocore's own retries are off so the two do
not multiply. Credentials come from boto3's chain (environment, shared profile, instance or container
role), never from the config file.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from s3transfer.subscribers import BaseSubscriber
from tenacity import Retrying as _Retrying
from tenacity import before_sleep_log, retry_if_exception, stop_after_attempt, wait_exponential

from migrator.blobs.digest import SHA256, Digest, as_digest
from migrator.blobs.store import (
    BlobStat,
    BlobStore,
    CountingStream,
    DigestMismatch,
    HashingReader,
    Received,
    SourceObject,
    _safe_relpath,
    _Wrapper,
)
from migrator.db import first_line
from migrator.errors import BlobMissing, BlobStoreRefused, BlobStoreUnavailable

log = logging.getLogger(__name__)

MB = 1024 * 1024
# The largest object one CopyObject may copy (an S3 limit); above it, UploadPartCopy.
COPY_OBJECT_LIMIT = 5 * 1024 * MB
# User metadata holding the sha256 the migrator verified while writing a multipart object.
METADATA_SHA256 = "cells-migrator-sha256"
# Source attributes carried over when an object is streamed from one bucket to another.
_CARRIED = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl")
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_THROTTLING = {"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
               "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
               "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled",
               "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException", "RequestTimeout",
               "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable"}


class IncompleteAnswer(ConnectionError):
    """The store's answer lacked a field every complete answer has (a multipart upload's ``UploadId``):
    it broke off, as when the server is stopped while it answers. Transient, like a reset connection."""


def is_transient_s3_error(exc: BaseException) -> bool:
    """An error that may go away if the same request is sent again."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in _THROTTLING
    return isinstance(exc, BotocoreConnectionError | HTTPClientError | IncompleteReadError | ConnectionResetError
                      | ConnectionAbortedError | BrokenPipeError | TimeoutError | IncompleteAnswer)


def retrying(attempts: int) -> _Retrying:
    """tenacity's retry loop for transient S3 errors: ``attempts`` tries with exponential backoff."""
    return _Retrying(retry=retry_if_exception(is_transient_s3_error), stop=stop_after_attempt(max(1, attempts)),
                     wait=wait_exponential(multiplier=0.25, max=8.0), reraise=True,
                     before_sleep=before_sleep_log(log, logging.WARNING))


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _hex(b64: str | None) -> str | None:
    return base64.b64decode(b64).hex() if b64 else None


def _b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


def _full_object_sha256(head: dict) -> str | None:
    """The object's sha256 as the server computed it, if it keeps one for the whole object (a multipart
    object's checksum is one of its parts' checksums: not the object's)."""
    value = head.get("ChecksumSHA256")
    if not value or "-" in value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    if "-" in str(head.get("ETag", "")).strip('"'):  # a multipart object (servers that omit ChecksumType)
        return None
    return _hex(value)


class _Prefixed(_Wrapper):
    """``head`` bytes, then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO):
        super().__init__()
        self._head, self._stream = memoryview(head), stream

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                out, self._head = bytes(self._head) + self._stream.read(), memoryview(b"")
                return out
            out, self._head = bytes(self._head[:n]), self._head[n:]
            return out
        return self._stream.read() if n is None or n < 0 else self._stream.read(n)


class S3BlobStore(BlobStore):
    """Objects in an S3-compatible bucket (boto3), under an optional prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, name: str = "blobs", *, profile: str | None = None,
                 addressing_style: str = "auto", ca_bundle: str | None = None, server_side_copy: bool = True,
                 multipart_threshold: int = 8 * MB, multipart_chunksize: int = 8 * MB, max_concurrency: int = 8,
                 retry_attempts: int = 5, connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0,
                 copy_object_limit: int = COPY_OBJECT_LIMIT):
        from botocore.config import Config

        super().__init__()
        self.bucket, self.prefix, self.name = bucket, prefix.strip("/"), name
        self.endpoint_url, self.region, self.profile = endpoint_url, region, profile
        self.server_side_copy = server_side_copy
        self.multipart_threshold, self.multipart_chunksize = multipart_threshold, multipart_chunksize
        self.max_concurrency, self.retry_attempts = max_concurrency, retry_attempts
        self.copy_object_limit = copy_object_limit
        session = boto3.session.Session(profile_name=profile, region_name=region)
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},  # tenacity retries (see the module docstring)
            connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
            max_pool_connections=max(10, 2 * max_concurrency + 4), s3={"addressing_style": addressing_style},
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config, verify=ca_bundle)
        self._tm = None
        self._tm_lock = threading.Lock()
        # One multipart transfer at a time per store in a process: memory stays bounded by one object's
        # chunks in flight (max_concurrency x multipart_chunksize), whatever the number of copy threads.
        self._large = threading.Semaphore(1)

    @classmethod
    def from_config(cls, cfg, name: str) -> S3BlobStore:
        return cls(cfg.bucket, cfg.prefix, cfg.endpoint_url, cfg.region, name=name, profile=cfg.profile,
                   addressing_style=cfg.addressing_style, ca_bundle=cfg.ca_bundle,
                   server_side_copy=cfg.server_side_copy, multipart_threshold=cfg.multipart_threshold_mb * MB,
                   multipart_chunksize=cfg.multipart_chunk_mb * MB, max_concurrency=cfg.max_concurrency,
                   retry_attempts=cfg.retry_attempts, connect_timeout_s=cfg.connect_timeout_s,
                   read_timeout_s=cfg.read_timeout_s)

    # ---------------------------------------------------------------- naming
    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{self.name} ({where} at {self.endpoint})"

    def _key(self, key: str) -> str:
        rel = _safe_relpath(key).as_posix()
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @property
    def transfer(self):
        """boto3's transfer manager over this store's client (built on first use)."""
        with self._tm_lock:
            if self._tm is None:

                config = TransferConfig(multipart_threshold=self.multipart_threshold,
                                        multipart_chunksize=self.multipart_chunksize,
                                        max_concurrency=self.max_concurrency, use_threads=True,
                                        preferred_transfer_client="classic")
                config.max_in_memory_upload_chunks = self.max_concurrency
                self._tm = create_transfer_manager(self.client, config)
            return self._tm

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """One S3 call, transient errors retried; still failing: :class:`BlobStoreUnavailable`."""
        try:
            for attempt in retrying(self.retry_attempts):
                with attempt:
                    return fn(*args, **kwargs)
        except Exception as exc:
            if is_transient_s3_error(exc):
                raise self.unavailable(what, exc) from exc
            raise

    def unavailable(self, what: str, exc: BaseException) -> BlobStoreUnavailable:
        return BlobStoreUnavailable(
            f"{self.describe()} does not answer ({what}, {self.retry_attempts} tries): {first_line(exc)}",
            "see docs/runbooks/object-store-down.md; once it answers, `migrator resume MOVE_ID`",
        )

    # ---------------------------------------------------------------- reading
    def _head(self, key: str) -> dict | None:

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                return None
            raise

    def _stat(self, key: str) -> BlobStat | None:
        head = self._head(key)
        if head is None:
            return None
        sha = _full_object_sha256(head) or (head.get("Metadata") or {}).get(METADATA_SHA256)
        return BlobStat(key, int(head["ContentLength"]), sha)

    def stat(self, key: str) -> BlobStat | None:
        return self._call(f"HEAD {key}", self._stat, key)

    def _get(self, key: str) -> SourceObject:

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                raise BlobMissing(f"blob {key!r} is missing from {self.name}", "restore it or fix the row") from None
            raise
        attrs = {k: resp[k] for k in _CARRIED if resp.get(k)}
        metadata = {k: v for k, v in (resp.get("Metadata") or {}).items() if k != METADATA_SHA256}
        if metadata:
            attrs["Metadata"] = metadata
        return SourceObject(CountingStream(resp["Body"], self._count_read), int(resp["ContentLength"]), attrs)

    def open(self, key: str) -> BinaryIO:
        return self._call(f"GET {key}", self._get, key).stream

    def open_source(self, key: str) -> SourceObject:
        return self._call(f"GET {key}", self._get, key)

    def _holds(self, key: str, expect: Digest | str) -> bool:
        expect = as_digest(expect)
        present = self._stat(key)
        if present is None:
            return False
        if expect.algorithm != SHA256:
            return self.read_digest(key, expect.algorithm).hex == expect.hex
        return (present.sha256 or self.read_sha256(key)) == expect.hex

    # ---------------------------------------------------------------- writing
    def _put_small(self, key: str, data: bytes, digest: str, attrs: dict, *, if_absent: bool) -> bool:
        """One PutObject carrying its sha256. ``if_absent``: only if nothing is there (False: 412)."""

        args = {**attrs, "Metadata": {**attrs.get("Metadata", {}), METADATA_SHA256: digest}}
        if if_absent:
            args["IfNoneMatch"] = "*"
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ChecksumAlgorithm="SHA256",
                                   ChecksumSHA256=_b64(digest), **args)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if if_absent and (status in (409, 412) or _error_code(exc) in ("PreconditionFailed",
                                                                          "ConditionalRequestConflict")):
                return False
            raise
        return True

    def _abort_incomplete(self, key: str) -> int:
        """Abort multipart uploads of ``key`` left by an earlier attempt that never completed."""
        full, aborted = self._key(key), 0
        resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
        for upload in resp.get("Uploads", []):
            if upload["Key"] == full:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload["UploadId"])
                aborted += 1
        if aborted:
            log.info("%s: aborted %d incomplete multipart upload(s) of %s", self.name, aborted, key)
        return aborted

    def _put_large(self, key: str, reader: HashingReader, size: int | None, attrs: dict) -> None:
        """A multipart upload (boto3's transfer manager) of the stream; completes only if the reader
        reaches its end (it refuses to when the digest is not the expected one)."""

        class _Size(BaseSubscriber):
            def on_queued(self, future, **kwargs):
                future.meta.provide_transfer_size(size)

        metadata = dict(attrs.get("Metadata", {}))
        if reader.expect and reader.expect.algorithm == SHA256:
            metadata[METADATA_SHA256] = reader.expect.hex  # visible only if the upload completes, i.e. it matched
        extra = {**attrs, "Metadata": metadata, "ChecksumAlgorithm": "SHA256"}
        with self._large:
            self._abort_incomplete(key)
            future = self.transfer.upload(reader, self.bucket, self._key(key), extra_args=extra,
                                          subscribers=[_Size()] if size is not None else None)
            try:
                try:
                    future.result()
                except KeyError as exc:
                    # s3transfer reads the field from the answer unchecked (CreateMultipartUpload's UploadId)
                    raise IncompleteAnswer(f"the answer to a multipart upload of {key} had no {exc}") from exc
            except BaseException:
                if not future.done():
                    future.cancel()  # aborts the multipart upload
                    try:
                        future.result()
                    except BaseException:  # noqa: BLE001 - the original error is the one to raise
                        pass
                raise

    def _write(self, key: str, source: SourceObject, expect: Digest | None, *, if_absent: bool) -> Received:
        """Write one object from ``source`` (open). Small: hashed in memory, then one PUT; large (or of
        unknown size past the threshold): a streamed multipart upload."""
        size = source.size
        if size is not None and size >= self.multipart_threshold:
            reader = HashingReader(source.stream, key, expect)
            self._put_large(key, reader, size, source.attrs)
            return Received(written=reader.size, read=reader.size, sha256=reader.hexdigest())
        head = HashingReader(source.stream, key, expect, check=False)
        data = head.read(self.multipart_threshold)
        if len(data) >= self.multipart_threshold:  # no size given, and it is large: stream the rest after it
            if if_absent and expect and self._holds(key, expect):
                return Received(read=len(data), skipped=True)
            reader = HashingReader(_Prefixed(data, source.stream), key, expect)
            self._put_large(key, reader, None, source.attrs)
            return Received(written=reader.size, read=reader.size, sha256=reader.hexdigest())
        digest = head.hexdigest()
        problem = head.mismatch()
        if problem is not None:
            raise problem
        done = Received(written=len(data), read=len(data), sha256=digest)
        if self._put_small(key, data, digest, source.attrs, if_absent=if_absent):
            return done
        if self._holds(key, digest):  # 412: something is there already; identical?
            return Received(read=len(data), skipped=True, sha256=digest)
        self._put_small(key, data, digest, source.attrs, if_absent=False)
        return done

    def put_stream(self, key: str, stream: BinaryIO, *, expect: Digest | str | None = None) -> tuple[str, int]:
        expect = as_digest(expect)
        seekable = getattr(stream, "seekable", lambda: False)()
        start = stream.tell() if seekable else 0

        def write():
            if seekable:
                stream.seek(start)
            return self._write(key, SourceObject(stream, None), expect, if_absent=False)

        if seekable:
            done = self._call(f"PUT {key}", write)
        else:
            try:
                done = write()  # a stream read once cannot be sent twice: no retry
            except Exception as exc:
                if is_transient_s3_error(exc):
                    raise self.unavailable(f"PUT {key}", exc) from exc
                raise
        return done.sha256, done.written

    def receive(self, src: BlobStore, key: str, *, expect: Digest | str | None = None, size: int | None = None,
                fresh: bool = False) -> Received:
        """Copy ``key`` from ``src`` unless an identical object is here (see the module docstring).

        Not retried here: the copier retries the whole object (a stream cannot be read twice)."""
        expect = as_digest(expect)
        if self.copies_server_side_from(src):
            return self._copy_server_side(src, key, expect, size, fresh)
        large = size is not None and size >= self.multipart_threshold
        if (large or not fresh) and expect and self._holds(key, expect):
            return Received(skipped=True)
        source = src.open_source(key)
        with source.stream:
            return self._write(key, source, expect, if_absent=fresh and not large)

    # ---------------------------------------------------------------- server-side copies
    def copies_server_side_from(self, src: BlobStore) -> bool:
        """Both stores behind one endpoint with one set of credentials: S3 copies between them itself."""
        return (isinstance(src, S3BlobStore) and self.server_side_copy and src.server_side_copy
                and src.endpoint == self.endpoint and src.profile == self.profile)

    def _copy_server_side(self, src: S3BlobStore, key: str, expect: Digest | None, size: int | None,
                          fresh: bool) -> Received:

        if not fresh and expect and self._holds(key, expect):
            return Received(skipped=True, server_side=True)
        if size is None:
            head = src._head(key)
            if head is None:
                raise BlobMissing(f"blob {key!r} is missing from {src.name}", "restore it or fix the row")
            size = int(head["ContentLength"])
        source = {"Bucket": src.bucket, "Key": src._key(key)}
        try:
            if size <= self.copy_object_limit:
                resp = self.client.copy_object(Bucket=self.bucket, Key=self._key(key), CopySource=source,
                                               ChecksumAlgorithm="SHA256")
                digest = _hex(resp.get("CopyObjectResult", {}).get("ChecksumSHA256"))
            else:
                with self._large:
                    self._abort_incomplete(key)
                    self.transfer.copy(source, self.bucket, self._key(key), extra_args={"ChecksumAlgorithm": "SHA256"},
                                       source_client=src.client).result()
                digest = None  # a multipart object has no whole-object sha256 on the server
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                raise BlobMissing(f"blob {key!r} is missing from {src.name}", "restore it or fix the row") from None
            raise
        read = 0
        if expect is not None and expect.algorithm != SHA256:  # the server computes sha256 only: read it back
            got, read = self.read_digest(key, expect.algorithm).hex, size
        else:
            if digest is None:  # the server keeps no whole-object sha256: read it back
                digest, read = self.read_sha256(key), size
            got = digest
        if expect is not None and got != expect.hex:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
            raise DigestMismatch(key, got, size, expect.algorithm)
        return Received(written=size, read=read, server_side=True, sha256=digest)

    # ---------------------------------------------------------------- the rest
    def delete(self, key: str) -> bool:
        existed = self.stat(key) is not None
        self._call(f"DELETE {key}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))
        return existed

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete in batches of 1,000 (DeleteObjects). Counts the keys the server reports gone (S3 also
        reports keys that were already absent)."""
        deleted, batch = 0, []
        for key in keys:
            batch.append({"Key": self._key(key)})
            if len(batch) == 1000:
                deleted += self._delete_batch(batch)
                batch = []
        if batch:
            deleted += self._delete_batch(batch)
        return deleted

    def _delete_batch(self, batch: list[dict]) -> int:
        resp = self._call(f"DeleteObjects ({len(batch)} keys)", self.client.delete_objects, Bucket=self.bucket,
                          Delete={"Objects": batch, "Quiet": False})
        errors = resp.get("Errors", [])
        if errors:
            first = errors[0]
            raise BlobStoreUnavailable(
                f"{self.describe()} refused to delete {len(errors)} object(s), e.g. {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message')}",
                "check the credentials' s3:DeleteObject permission on the bucket, then retry")
        return len(resp.get("Deleted", []))

    def keys(self) -> Iterator[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        args = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._call("LIST", self.client.list_objects_v2, **args)
            for item in page.get("Contents", []):
                yield item["Key"][len(prefix):]
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def check(self) -> None:
        try:
            self._call("HEAD bucket", self.client.head_bucket, Bucket=self.bucket)
        except BlobStoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure: missing bucket, no permission
            raise BlobStoreRefused(
                f"{self.describe()} cannot be used: {first_line(exc)}",
                "check blobs.bucket / blobs.endpoint_url of the cell and the S3 credentials "
                "(environment or instance role; docs/deploy.md)",
            ) from None

