"""copy_blobs: every object the organization's rows reference, checksummed on arrival.

Blob-bearing tables name their key and checksum columns in the dictionary. Rows are read in key
order in batches; each batch's objects are copied by a bounded thread pool (``moves.blob_workers``):
an object already in the target with the row's sha256 is skipped, any other is copied (streamed, or
server-side when both stores sit behind one S3 endpoint) and written only if its bytes hash to the
row's sha256. A batch's checkpoint is recorded once every object of the batch has finished, so a
checkpoint never covers an object that is not there; when one fails, the objects finished before it
(in key order) are checkpointed first. A referenced object missing from the source fails the move
naming the key and row. Transient object store errors are retried per object (tenacity); still failing,
they end as :class:`~migrator.errors.BlobStoreUnavailable` (retried by the task, then a resumable
failure).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

from psycopg import sql

from migrator.blobs.s3 import is_transient_s3_error, retrying
from migrator.blobs.store import BlobStore, DigestMismatch, Received
from migrator.copy.spec import TableSpec, json_key
from migrator.db import first_line
from migrator.errors import BlobChecksumMismatch, BlobMissing, BlobStoreRefused, BlobStoreUnavailable
from migrator.observability import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobRef:
    table: str
    row_key: list
    key: str
    checksum: str | None
    size: int | None


def iter_refs(conn, spec: TableSpec, blob, org: int, *, after: list | None, hi: list | None,
              batch: int) -> Iterator[list[BlobRef]]:
    """Batches of blob references of the organization's rows of one table, in key order."""
    size = sql.Identifier("t", blob.size) if blob.size else sql.SQL("NULL::bigint")
    while True:
        q = sql.SQL(
            "SELECT {pk}, {key}, {checksum}, {size} FROM {table} AS t WHERE {where} AND {key} IS NOT NULL"
            " ORDER BY {pk} LIMIT {n}"
        ).format(pk=spec.pk_cols("t"), key=sql.Identifier("t", blob.key), checksum=sql.Identifier("t", blob.checksum),
                 size=size, table=spec.ident, where=spec.where(after, hi), n=sql.Literal(batch))
        rows = conn.execute(q, {"org": org}).fetchall()
        if not rows:
            return
        npk = len(spec.pk)
        refs = [BlobRef(spec.name, json_key(r[:npk]), r[npk], r[npk + 1], r[npk + 2]) for r in rows]
        yield refs
        if len(rows) < batch:
            return
        after = refs[-1].row_key


def _where(ref: BlobRef) -> str:
    return f"{ref.table} row ({', '.join(map(str, ref.row_key))})"


def _attempts(*stores: BlobStore) -> int:
    return max(getattr(store, "retry_attempts", 1) for store in stores)


def _retried(fn: Callable[[], Received | None], ref: BlobRef, what: str, *stores: BlobStore):
    """``fn`` with transient object store errors retried; still failing: :class:`BlobStoreUnavailable`."""
    attempts = _attempts(*stores)
    try:
        for attempt in retrying(attempts):
            with attempt:
                return fn()
    except Exception as exc:
        where = f"{what} blob {ref.key!r} ({_where(ref)}): {' / '.join(s.describe() for s in stores)}"
        if is_transient_s3_error(exc):
            raise BlobStoreUnavailable(
                f"{where} does not answer after {attempts} tries: {first_line(exc)}",
                "see docs/runbooks/object-store-down.md; once it answers, `migrator resume MOVE_ID`",
            ) from exc
        if type(exc).__module__.startswith("botocore"):
            raise BlobStoreRefused(
                f"{where} refused: {first_line(exc)}",
                "check the bucket names and the workers' S3 permissions (docs/deploy.md, Object storage), "
                "then `migrator resume MOVE_ID`",
            ) from exc
        raise


def copy_blob(src: BlobStore, dst: BlobStore, ref: BlobRef, *, fresh: bool = False) -> Received:
    """Copy one object unless an identical one is there (``Received.written`` is 0 then).

    ``fresh``: a first attempt at this object, so the target most likely does not have it yet (a store
    may then write first and compare only if something is there)."""
    def once() -> Received:
        return dst.receive(src, ref.key, expect_sha256=ref.checksum, size=ref.size, fresh=fresh)

    try:
        return _retried(once, ref, "copying", src, dst)
    except BlobMissing:
        raise BlobMissing(
            f"blob {ref.key!r} referenced by {_where(ref)} is missing from {src.name}",
            "restore the object in the source store (or fix the row), then `migrator resume`",
        ) from None
    except DigestMismatch as exc:
        raise BlobChecksumMismatch(
            f"blob {ref.key!r} ({_where(ref)}): sha256 {exc.digest[:12]}… after copy, row says {ref.checksum[:12]}…",
            "the source object is corrupt or the row is wrong; repair it, then `migrator resume`",
        ) from None


def verify_blob(dst: BlobStore, ref: BlobRef) -> None:
    """The object is in ``dst`` with the row's sha256 (the one the store knows, else read back)."""
    def once() -> None:
        present = dst.stat(ref.key)
        if present is None:
            raise BlobMissing(f"blob {ref.key!r} ({_where(ref)}) is missing from {dst.name} after the copy",
                              "resume the move: copy_blobs runs again for missing objects")
        if ref.checksum and dst.sha256(ref.key, present) != ref.checksum:
            raise BlobChecksumMismatch(f"blob {ref.key!r} ({_where(ref)}) in {dst.name} does not match its checksum",
                                       "resume the move to copy it again")

    _retried(once, ref, "verifying", dst)


def blob_units(dictionary) -> list[tuple[str, object]]:
    """(table, blob spec) pairs: one unit of work each."""
    return [(name, blob) for name in dictionary.blob_tables() for blob in dictionary.tables[name].blobs]


def find_blob(dictionary, table: str, key_column: str):
    for blob in dictionary.tables[table].blobs:
        if blob.key == key_column:
            return blob
    raise KeyError(f"{table}.{key_column}")


@dataclass
class BlobCopyStats:
    """What a unit's copy did (its result in the control database)."""

    blobs: int = 0  # objects checked
    copied: int = 0
    skipped: int = 0  # identical object already in the target
    server_side: int = 0  # copied by the object store itself
    bytes_written: int = 0
    bytes_read: int = 0  # object bytes that passed through this worker

    def add(self, got: Received) -> None:
        self.blobs += 1
        self.copied += 0 if got.skipped else 1
        self.skipped += 1 if got.skipped else 0
        self.server_side += 1 if got.server_side and not got.skipped else 0
        self.bytes_written += got.written
        self.bytes_read += got.read

    def as_dict(self) -> dict:
        return asdict(self)


def copy_in_batches(batches: Iterable[list], copy_one: Callable[[object], Received], *, workers: int,
                    checkpoint: Callable[[list | None, int, int], None], position: list | None = None,
                    heartbeat_s: float = 10.0) -> BlobCopyStats:
    """Copy each batch's objects with ``workers`` threads; ``checkpoint(last_row_key, count, bytes)`` once
    all of a batch has finished (and every batch before it).

    With more than one thread, the next batch is read and started while one finishes, so threads do not
    idle at the end of each batch. On a failure, the objects of the batch finished before the first failed
    one (in key order) are checkpointed, objects not started yet are never started, then the failure is
    raised. While a batch runs longer than ``heartbeat_s``, ``checkpoint(position, 0, 0)`` renews the
    unit's lease without moving its position."""
    stats = BlobCopyStats()
    depth = 2 if workers > 1 else 1
    running: deque[tuple[list, list[Future]]] = deque()

    def finish_oldest() -> None:
        nonlocal position
        refs, futures = running.popleft()
        while True:
            done, pending = wait(futures, timeout=heartbeat_s, return_when=FIRST_EXCEPTION)
            if not pending or any(f.exception() is not None for f in done):
                break
            checkpoint(position, 0, 0)
        if pending:  # one failed: start nothing more
            for f in [*futures, *(f for _, later in running for f in later)]:
                f.cancel()  # running ones finish (a multipart upload completes or aborts)
            wait([*futures, *(f for _, later in running for f in later)])
        finished, nbytes = 0, 0
        for f in futures:
            if f.cancelled() or f.exception() is not None:
                break
            got = f.result()
            stats.add(got)
            finished += 1
            nbytes += got.written
        if finished:
            position = refs[finished - 1].row_key
            checkpoint(position, finished, nbytes)
        if finished < len(refs):
            raise next(f.exception() for f in futures if not f.cancelled() and f.exception() is not None)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="blob-copy") as pool:
        for refs in batches:
            if any(f.done() and f.exception() is not None for _, fs in running for f in fs if not f.cancelled()):
                break  # something failed already: finish (and raise) before starting more
            running.append((refs, [pool.submit(copy_one, ref) for ref in refs]))
            if len(running) >= depth:
                finish_oldest()
        while running:
            finish_oldest()
    return stats


def copy_blob_range(conn, src: BlobStore, dst: BlobStore, spec: TableSpec, blob, org: int, *,
                    position: list | None, batch: int, checkpoint: Callable[[list, int, int], None],
                    workers: int = 1, fresh: bool = False, heartbeat_s: float = 10.0) -> dict:
    """Copy the objects of one blob column of the organization's rows, from ``position`` on. Returns
    :class:`BlobCopyStats` as a dict."""
    stats = copy_in_batches(
        iter_refs(conn, spec, blob, org, after=position, hi=None, batch=batch),
        lambda ref: copy_blob(src, dst, ref, fresh=fresh), workers=workers, checkpoint=checkpoint,
        position=position, heartbeat_s=heartbeat_s)
    metrics.blob_bytes_read.inc(stats.bytes_read)
    return stats.as_dict()


def verify_blob_range(conn, dst: BlobStore, spec: TableSpec, blob, org: int, *, batch: int, workers: int = 1,
                      heartbeat: Callable[[], None] = lambda: None) -> int:
    """Verify every object of one blob column of the organization's rows; returns how many."""
    count = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="blob-verify") as pool:
        for refs in iter_refs(conn, spec, blob, org, after=None, hi=None, batch=batch):
            for future in [pool.submit(verify_blob, dst, ref) for ref in refs]:
                future.result()
            count += len(refs)
            heartbeat()
    return count


def delete_org_blobs(conn, store: BlobStore, spec: TableSpec, blob, org: int, batch: int = 500) -> int:
    """Delete from ``store`` every object the organization's rows (read from ``conn``) reference."""
    deleted = 0
    for refs in iter_refs(conn, spec, blob, org, after=None, hi=None, batch=batch):
        deleted += store.delete_many(r.key for r in refs)
    return deleted
