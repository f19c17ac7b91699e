"""Pure logic of the blob copy: batch checkpoints with a thread pool, which S3 errors are transient, the
blob store config (no credentials in the file)."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from pydantic import ValidationError

from migrator.blobs.copier import BlobRef, copy_in_batches
from migrator.blobs.s3 import IncompleteAnswer, is_transient_s3_error
from migrator.blobs.store import Received
from migrator.config import BlobStoreConfig


def _refs(n: int, start: int = 0) -> list[BlobRef]:
    return [BlobRef("uploads", [i], f"k/{i}", None, 10) for i in range(start, start + n)]


def test_a_batch_is_checkpointed_once_all_of_it_finished_in_any_order():
    gates = {i: threading.Event() for i in range(6)}
    checkpoints = []

    def copy(ref):
        if ref.row_key[0] == 0:
            gates[1].wait(5)  # the first object finishes after the second
        gates[ref.row_key[0]].set()
        return Received(written=10, read=10)

    stats = copy_in_batches([_refs(3), _refs(3, 3)], copy, workers=3,
                            checkpoint=lambda pos, n, b: checkpoints.append((pos, n, b)))
    assert checkpoints == [([2], 3, 30), ([5], 3, 30)]
    assert (stats.blobs, stats.copied, stats.bytes_written) == (6, 6, 60)


def test_a_failure_checkpoints_only_the_objects_finished_before_it_in_key_order():
    checkpoints = []

    def copy(ref):
        if ref.row_key[0] == 2:
            raise OSError("object store gone")
        return Received(written=10, read=10) if ref.row_key[0] != 1 else Received(skipped=True)

    with pytest.raises(OSError, match="gone"):
        copy_in_batches([_refs(5)], copy, workers=2, checkpoint=lambda pos, n, b: checkpoints.append((pos, n, b)))
    assert checkpoints == [([1], 2, 10)]  # objects 0 and 1; never 3 or 4, even if they were copied


def test_the_next_batch_runs_while_one_finishes_and_a_failure_there_keeps_earlier_checkpoints():
    checkpoints = []

    def copy(ref):
        if ref.row_key[0] == 5:
            raise ConnectionResetError("reset")
        return Received(written=1, read=1)

    with pytest.raises(ConnectionResetError):
        copy_in_batches([_refs(4), _refs(4, 4), _refs(4, 8)], copy, workers=2,
                        checkpoint=lambda pos, n, b: checkpoints.append((pos, n, b)))
    assert checkpoints == [([3], 4, 4), ([4], 1, 1)]


def test_a_long_batch_renews_the_lease_without_moving_the_position():
    release = threading.Event()
    checkpoints = []

    def checkpoint(pos, n, b):
        checkpoints.append((pos, n, b))
        if len(checkpoints) == 2:
            release.set()

    copy_in_batches([_refs(1)], lambda ref: (release.wait(5), Received(written=1))[1], workers=1,
                    checkpoint=checkpoint, position=["before"], heartbeat_s=0.01)
    assert checkpoints[:2] == [(["before"], 0, 0)] * 2 and checkpoints[-1] == ([0], 1, 1)


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def test_transient_s3_errors():
    assert is_transient_s3_error(_client_error(503, "SlowDown"))
    assert is_transient_s3_error(_client_error(500, "InternalError"))
    assert is_transient_s3_error(_client_error(400, "RequestTimeout"))
    assert is_transient_s3_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient_s3_error(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient_s3_error(ConnectionResetError())
    assert not is_transient_s3_error(_client_error(403, "AccessDenied"))
    assert not is_transient_s3_error(_client_error(404, "NoSuchBucket"))
    assert not is_transient_s3_error(ValueError("bad key"))


def test_blob_store_config_refuses_credentials_and_needs_a_bucket():
    with pytest.raises(ValidationError, match="credentials are never read from the config file"):
        BlobStoreConfig(kind="s3", bucket="b", aws_secret_access_key="x")
    with pytest.raises(ValidationError, match="kind s3 needs a bucket"):
        BlobStoreConfig(kind="s3")
    with pytest.raises(ValidationError):
        BlobStoreConfig(kind="s3", bucket="b", multipart_chunk_mb=1)  # below S3's smallest part
    cfg = BlobStoreConfig(kind="s3", bucket="b", endpoint_url="http://127.0.0.1:9000", prefix="cell-1")
    assert cfg.server_side_copy is True and cfg.multipart_threshold_mb == 8


def test_an_answer_broken_off_is_transient():
    """A store stopped while it answers CreateMultipartUpload gave a 200 without UploadId (s3transfer then
    raised KeyError): it is retried like a reset connection, and reported as the store being unavailable."""
    assert is_transient_s3_error(IncompleteAnswer("the answer to a multipart upload of k had no 'UploadId'"))
    assert not is_transient_s3_error(KeyError("UploadId"))
