"""The S3 blob store and the copier against a real S3-compatible server process (moto_server over HTTP):
multipart streaming, checksums, server-side copies, half-written objects, transient errors."""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import pytest

from migrator.blobs.copier import BlobRef, copy_blob, verify_blob
from migrator.blobs.s3 import S3BlobStore
from migrator.blobs.store import LocalBlobStore
from migrator.errors import BlobChecksumMismatch, BlobMissing, BlobStoreRefused, BlobStoreUnavailable
from migrator.fleet.s3_server import MotoServer, TcpProxy, use_test_credentials

pytestmark = pytest.mark.integration

MB = 1024 * 1024
LARGE = 12 * MB + 123  # three 5 MiB parts with the tests' thresholds


def _store(endpoint: str, bucket: str, **kw) -> S3BlobStore:
    args = {"region": "us-east-1", "multipart_threshold": 5 * MB, "multipart_chunksize": 5 * MB,
            "max_concurrency": 2, "retry_attempts": 3, "connect_timeout_s": 2, "read_timeout_s": 10, **kw}
    return S3BlobStore(bucket, endpoint_url=endpoint, name=f"bucket {bucket}", **args)


@pytest.fixture
def buckets(s3_server):
    names = [f"t-{uuid.uuid4().hex[:12]}-{i}" for i in range(2)]
    s3_server.create_buckets(*names)
    return names


def _ref(key: str, data: bytes) -> BlobRef:
    return BlobRef("uploads", [1], key, hashlib.sha256(data).hexdigest(), len(data))


def _uploads(store: S3BlobStore) -> list:
    return store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def test_streamed_copies_small_and_multipart_checksummed_and_skipped_when_present(s3_server, buckets):
    src = _store(s3_server.endpoint_url, buckets[0])
    dst = _store(s3_server.endpoint_url, buckets[1], server_side_copy=False)
    small, large = os.urandom(3000), os.urandom(LARGE)
    src.client.put_object(Bucket=src.bucket, Key="a/small", Body=small, ContentType="application/pdf",
                          Metadata={"filename": "rapport.pdf"})
    src.put_stream("a/large", io.BytesIO(large))

    got = copy_blob(src, dst, _ref("a/small", small), fresh=True)
    assert (got.written, got.read, got.skipped, got.server_side) == (3000, 3000, False, False)
    head = dst.client.head_object(Bucket=dst.bucket, Key="a/small")
    assert head["ContentType"] == "application/pdf" and head["Metadata"]["filename"] == "rapport.pdf"
    assert dst.stat("a/small").sha256 == hashlib.sha256(small).hexdigest()  # kept by the server, no read-back

    got = copy_blob(src, dst, _ref("a/large", large), fresh=True)
    assert got.written == got.read == LARGE
    etag = dst.client.head_object(Bucket=dst.bucket, Key="a/large")["ETag"]
    assert etag.strip('"').endswith("-3"), f"not a multipart upload: {etag}"
    assert dst.stat("a/large").sha256 == hashlib.sha256(large).hexdigest()  # verified while streaming
    assert dst.read_sha256("a/large") == hashlib.sha256(large).hexdigest()

    # Present and identical: skipped. A first attempt (fresh) finds it with If-None-Match; a later one looks first.
    assert copy_blob(src, dst, _ref("a/small", small), fresh=True).skipped
    again = copy_blob(src, dst, _ref("a/small", small), fresh=False)
    assert again.skipped and again.read == 0
    again = copy_blob(src, dst, _ref("a/large", large), fresh=True)
    assert again.skipped and again.read == 0
    verify_blob(dst, _ref("a/large", large))

    # S3 -> local and local -> S3 stream the same way.
    local = LocalBlobStore(s3_server.workdir / f"local-{buckets[0]}")
    assert copy_blob(dst, local, _ref("a/large", large)).written == LARGE
    dst.delete("a/large")
    assert copy_blob(local, dst, _ref("a/large", large), fresh=True).written == LARGE
    verify_blob(dst, _ref("a/large", large))
    assert _uploads(dst) == []


def test_a_wrong_object_is_never_stored_and_no_upload_is_left(s3_server, buckets):
    src = _store(s3_server.endpoint_url, buckets[0])
    dst = _store(s3_server.endpoint_url, buckets[1], server_side_copy=False)
    small, large = os.urandom(2000), os.urandom(LARGE)
    src.put_bytes("b/small", small)
    src.put_bytes("b/large", large)
    for key, data in (("b/small", small), ("b/large", large)):
        lie = BlobRef("uploads", [7], key, hashlib.sha256(b"other bytes").hexdigest(), len(data))
        with pytest.raises(BlobChecksumMismatch, match=r"uploads row \(7\)"):
            copy_blob(src, dst, lie, fresh=True)
        assert dst.stat(key) is None
    assert _uploads(dst) == []
    with pytest.raises(BlobMissing, match="missing from"):
        copy_blob(src, dst, _ref("b/nothing", b"x"), fresh=True)


def test_server_side_copy_moves_no_bytes_through_the_worker_and_verifies_from_the_server(s3_server, buckets):
    src = _store(s3_server.endpoint_url, buckets[0])
    dst = _store(s3_server.endpoint_url, buckets[1])
    assert dst.copies_server_side_from(src)
    small, large = os.urandom(5000), os.urandom(LARGE)
    src.put_bytes("c/small", small)
    src.put_bytes("c/large", large)
    for key, data in (("c/small", small), ("c/large", large)):
        got = copy_blob(src, dst, _ref(key, data), fresh=True)
        assert got.server_side and got.read == 0 and got.written == len(data)
        assert dst.stat(key).sha256 == hashlib.sha256(data).hexdigest()  # CopyObject's x-amz-checksum-sha256
    assert src.bytes_read == dst.bytes_read == 0
    assert copy_blob(src, dst, _ref("c/large", large), fresh=False).skipped

    # Above the CopyObject limit: UploadPartCopy parts, then the sha256 is read back (a multipart object
    # has no whole-object checksum on the server). Here the limit is lowered to exercise it.
    dst.copy_object_limit = 6 * MB
    dst.delete("c/large")
    got = copy_blob(src, dst, _ref("c/large", large), fresh=True)
    assert got.server_side and got.read == LARGE
    assert dst.client.head_object(Bucket=dst.bucket, Key="c/large")["ETag"].strip('"').endswith("-3")

    # A server-side copy whose result does not hash to the row's sha256 is deleted again.
    with pytest.raises(BlobChecksumMismatch):
        copy_blob(src, dst, BlobRef("uploads", [9], "c/small", "0" * 64, 5000), fresh=False)
    assert dst.stat("c/small") is None


def test_transient_errors_are_retried_and_then_reported_as_the_store_unavailable(s3_server, buckets):
    proxy = TcpProxy(s3_server.port).start()
    try:
        src = _store(s3_server.endpoint_url, buckets[0])
        dst = _store(proxy.endpoint_url, buckets[1], retry_attempts=3)
        data = os.urandom(4000)
        src.put_bytes("d/1", data)
        proxy.fail_next(1, "503")
        proxy.fail_next(1, "reset")
        assert copy_blob(src, dst, _ref("d/1", data), fresh=True).written == 4000
        assert proxy.failed == 2
        proxy.fail_next(10, "503")
        with pytest.raises(BlobStoreUnavailable, match=r"does not answer after 3 tries") as err:
            copy_blob(src, dst, _ref("d/1", data), fresh=False)
        assert "object-store-down.md" in str(err.value)
        proxy.fail_next(10, "reset")
        with pytest.raises(BlobStoreUnavailable, match=rf"bucket {buckets[1]}"):
            dst.stat("d/1")
    finally:
        proxy.stop()
    # A refusal that retrying will not change fails at once, naming the store.
    missing = _store(s3_server.endpoint_url, f"missing-{buckets[0]}")
    with pytest.raises(BlobStoreRefused, match=rf"missing-{buckets[0]}.* refused: .*NoSuchBucket"):
        copy_blob(src, missing, _ref("d/1", data), fresh=True)
    with pytest.raises(BlobStoreRefused, match="cannot be used"):
        missing.check()


def test_server_stopped_mid_multipart_upload_leaves_no_object_and_the_next_copy_completes(tmp_path):
    """The server is stopped while a multipart upload streams (at a moment the test controls: from inside
    the source stream), then started again with the objects it had."""
    use_test_credentials()
    with MotoServer(tmp_path / "moto", record=True) as server:
        server.create_buckets("half-src", "half-dst")
        local = LocalBlobStore(tmp_path / "local")
        dst = _store(server.endpoint_url, "half-dst", retry_attempts=2)
        data = os.urandom(LARGE)
        local.put_bytes("e/large", data)

        class StopsTheServer(io.RawIOBase):
            """The source stream: after the first part, stops the S3 server."""

            def __init__(self):
                self.inner, self.sent = io.BytesIO(data), 0

            def readable(self):
                return True

            def read(self, n=-1):
                if self.sent >= 6 * MB and server.proc is not None:
                    server.stop()
                chunk = self.inner.read(n)
                self.sent += len(chunk)
                return chunk

        with pytest.raises(BlobStoreUnavailable):
            dst.put_stream("e/large", StopsTheServer())
        server.restart()
        assert dst.stat("e/large") is None  # never completed: not there to be taken as copied
        got = copy_blob(local, dst, _ref("e/large", data), fresh=False)
        assert got.written == LARGE and dst.read_sha256("e/large") == hashlib.sha256(data).hexdigest()
        assert _uploads(dst) == []  # the incomplete upload was aborted before the new one


@pytest.mark.parametrize("server_side", [False, True])
def test_md5_and_no_checksum_rows_are_copied_verified_and_refused_in_their_own_algorithm(s3_server, buckets,
                                                                                        server_side):
    src = _store(s3_server.endpoint_url, buckets[0])
    dst = _store(s3_server.endpoint_url, buckets[1], server_side_copy=server_side)
    small, large = os.urandom(2500), os.urandom(LARGE)
    src.put_bytes("m/small", small)
    src.put_bytes("m/large", large)
    for key, data in (("m/small", small), ("m/large", large)):
        md5 = BlobRef("uploads", [3], key, hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data), "md5",
                      "hex")
        lie = BlobRef("uploads", [4], key, hashlib.md5(b"other", usedforsecurity=False).hexdigest(), len(data),
                      "md5", "hex")
        with pytest.raises(BlobChecksumMismatch, match=r"uploads row \(4\)\): md5 .* after copy, row says md5"):
            copy_blob(src, dst, lie, fresh=True)
        assert dst.stat(key) is None
        got = copy_blob(src, dst, md5, fresh=True)
        assert got.written == len(data) and got.server_side == server_side
        assert copy_blob(src, dst, md5, fresh=False).skipped  # present with that md5: read back, compared
        verify_blob(dst, md5)
        bare = BlobRef("uploads", [5], key, None, len(data))  # no checksum column: both sides hashed
        assert copy_blob(src, dst, bare, fresh=False).skipped
        verify_blob(dst, bare, src)
    assert _uploads(dst) == []
