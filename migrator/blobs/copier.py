"""copy_blobs: every object the organization's rows reference, checksummed on arrival.

Blob-bearing tables name their key (a column, or ``key_sql``: an expression over the row's columns)
and checksum columns in the dictionary; a checksum is computed with the declared algorithm (sha256,
sha1, md5) and held in the declared encoding (hex, raw ``bytea``, base64), decoded once per row
(:mod:`migrator.blobs.digest`). Rows are read in key order in batches; each batch's objects are
copied by a bounded thread pool (``moves.blob_workers``): an object already in the target with the
row's checksum is skipped, any other is copied (streamed, or server-side when both stores sit behind
one S3 endpoint) and written only if its bytes hash to the row's checksum. A table without a
checksum column is checked against the source object's own sha256 (hashed on both sides). A batch's
checkpoint is recorded once every object of the batch has finished, so a checkpoint never covers an
object that is not there; when one fails, the objects finished before it (in key order) are
checkpointed first. A referenced object missing from the source fails the move naming the key and
row. Transient object store errors are retried per object (tenacity); still failing, they end as
:class:`~migrator.errors.BlobStoreUnavailable` (retried by the task, then a resumable failure).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

from psycopg import sql

from migrator.blobs.digest import SHA256, ChecksumFormatError, Digest, decode, shown
from migrator.blobs.s3 import is_transient_s3_error, retrying
from migrator.blobs.shared import copying_into, delete_unreferenced
from migrator.blobs.store import BlobStore, DigestMismatch, Received
from migrator.copy.spec import INDEX, TableSpec, choose_path, json_key, org_scan
from migrator.db import first_line
from migrator.errors import BlobChecksumMismatch, BlobMissing, BlobStoreRefused, BlobStoreUnavailable
from migrator.observability import metrics

log = logging.getLogger(__name__)


# Batches of blob references read per query on the index path (each query sorts what it reads).
READ_AHEAD = 50


# The column a computed key (``key_sql``) is selected as, inside the organization's rows.
COMPUTED_KEY = "__cells_migrator_blob_key"


@dataclass(frozen=True)
class BlobRef:
    """One object a row references. ``checksum``: the row's digest in lower-case hex, computed with
    ``algorithm``, whatever ``encoding`` the row holds it in (None: no checksum column)."""

    table: str
    row_key: list
    key: str
    checksum: str | None
    size: int | None
    algorithm: str = SHA256
    encoding: str | None = None

    @property
    def digest(self) -> Digest | None:
        return Digest(self.algorithm, self.checksum) if self.checksum else None


def key_expr(blob, alias: str = "t") -> sql.Composable:
    """The object key of a row of ``alias`` (:meth:`~migrator.dictionary.model.BlobSpec.key_expr`)."""
    return blob.key_expr(alias)


def make_ref(table: str, row_key: list, key, raw_checksum, size, blob) -> BlobRef:
    """A :class:`BlobRef` from a row's values; a checksum that cannot be one of the declared algorithm
    and encoding fails naming the blob, the row and what to declare."""
    digest = None
    if blob.checksum is not None and raw_checksum is not None:
        try:
            digest = decode(raw_checksum, blob.algorithm, blob.encoding)
        except ChecksumFormatError as exc:
            declared = f"algorithm {blob.algorithm}" + (f", encoding {blob.encoding}" if blob.encoding else "")
            raise BlobChecksumMismatch(
                f"blob {key!r} ({table} row ({', '.join(map(str, row_key))})): checksum column "
                f"{table}.{blob.checksum} {exc} (the dictionary declares {declared})",
                f"declare the algorithm and encoding the application writes in the blobs of {table} "
                "(docs/dictionary.md, Blobs), or repair the row; then `migrator resume MOVE_ID`",
            ) from None
    encoding = blob.encoding or (None if raw_checksum is None else ("raw" if isinstance(
        raw_checksum, bytes | bytearray | memoryview) else "hex"))
    return BlobRef(table, row_key, key, digest.hex if digest else None, size, blob.algorithm, encoding)


def iter_refs(conn, spec: TableSpec, blob, org: int, *, after: list | None, hi: list | None,
              batch: int) -> Iterator[list[BlobRef]]:
    """Batches of blob references of the organization's rows of one table, in key order.

    On the index path each query reads the organization's rows after ``after`` and sorts them (ADR
    0017), so it fetches ``READ_AHEAD`` batches at a time (yielded one by one, each resumable from
    its last key as before) instead of re-reading them for every batch.
    """
    size = sql.Identifier("t", blob.size) if blob.size else sql.SQL("NULL::bigint")
    checksum = sql.Identifier("t", blob.checksum) if blob.checksum else sql.SQL("NULL::text")
    inner = [spec.pk_cols("t")]
    if blob.key_sql is not None:  # computed inside the rows' subquery, where the row's columns are in scope
        inner.append(sql.SQL("{} AS {}").format(key_expr(blob), sql.Identifier(COMPUTED_KEY)))
        key = sql.Identifier("t", COMPUTED_KEY)
    else:
        key = sql.Identifier("t", blob.key)
        inner.append(key)
    cols = sql.SQL(", ").join([*inner, *([checksum] if blob.checksum else []), *([size] if blob.size else [])])
    path = choose_path(conn, spec, org)
    fetch = batch * READ_AHEAD if path == INDEX else batch
    npk = len(spec.pk)
    while True:
        with org_scan(conn, spec, org, path=path, first_rows=True) as s:
            q = sql.SQL("SELECT {pk}, {key}, {checksum}, {size} FROM {rows} WHERE {key} IS NOT NULL"
                        " ORDER BY {pk} LIMIT {n}").format(
                pk=spec.pk_cols("t"), key=key, checksum=checksum, size=size, rows=s.rows_of(after, hi, cols),
                n=sql.Literal(fetch))
            rows = conn.execute(q, {"org": org}).fetchall()
        refs = [make_ref(spec.name, json_key(r[:npk]), r[npk], r[npk + 1], r[npk + 2], blob) for r in rows]
        for i in range(0, len(refs), batch):
            yield refs[i:i + batch]
        if len(rows) < fetch:
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


def _expected(src: BlobStore, ref: BlobRef) -> Digest:
    """What the copy must hash to: the row's checksum, else (no checksum column) the source object's sha256."""
    if ref.digest is not None:
        return ref.digest
    return Digest(SHA256, src.sha256(ref.key))


def copy_blob(src: BlobStore, dst: BlobStore, ref: BlobRef, *, fresh: bool = False) -> Received:
    """Copy one object unless an identical one is there (``Received.written`` is 0 then).

    Identical means: hashes to the row's checksum (its algorithm), or, without a checksum column, to the
    source object's sha256 (known to an S3 store, else read: the source is then read twice). ``fresh``:
    a first attempt at this object, so the target most likely does not have it yet (a store may then
    write first and compare only if something is there)."""
    expected: list[Digest] = []

    def once() -> Received:
        expected[:] = [_expected(src, ref)]
        return dst.receive(src, ref.key, expect=expected[0], size=ref.size, fresh=fresh)

    try:
        return _retried(once, ref, "copying", src, dst)
    except BlobMissing:
        raise BlobMissing(
            f"blob {ref.key!r} referenced by {_where(ref)} is missing from {src.name}",
            "restore the object in the source store (or fix the row), then `migrator resume`",
        ) from None
    except DigestMismatch as exc:
        got = Digest(exc.algorithm, exc.digest)
        if ref.digest is None:
            raise BlobChecksumMismatch(
                f"blob {ref.key!r} ({_where(ref)}): sha256 {exc.digest[:12]}… after copy, the source object hashes "
                f"to {expected[0].hex[:12]}… (the table has no checksum column: both sides are hashed)",
                "the source object changed while it was copied, or the store returned other bytes; "
                "`migrator resume MOVE_ID` copies it again",
            ) from None
        raise BlobChecksumMismatch(
            f"blob {ref.key!r} ({_where(ref)}): {shown(got, ref.encoding)} after copy, row says "
            f"{shown(ref.digest, ref.encoding)}",
            "the source object is corrupt or the row is wrong; repair it, then `migrator resume MOVE_ID`",
        ) from None


def verify_blob(dst: BlobStore, ref: BlobRef, src: BlobStore | None = None) -> None:
    """The object is in ``dst`` with the row's checksum (a sha256 the store knows, else read back); without
    a checksum column, with the same sha256 as the object in ``src`` (both hashed)."""
    def once() -> None:
        present = dst.stat(ref.key)
        if present is None:
            raise BlobMissing(f"blob {ref.key!r} ({_where(ref)}) is missing from {dst.name} after the copy",
                              "resume the move: copy_blobs runs again for missing objects")
        if ref.digest is not None:
            got = dst.digest(ref.key, ref.algorithm, present)
            if got.hex != ref.checksum:
                raise BlobChecksumMismatch(
                    f"blob {ref.key!r} ({_where(ref)}) in {dst.name} does not match its checksum: "
                    f"{shown(got, ref.encoding)}, row says {shown(ref.digest, ref.encoding)}",
                    "resume the move to copy it again")
        elif src is not None:
            want, got = src.sha256(ref.key), dst.sha256(ref.key, present)
            if got != want:
                raise BlobChecksumMismatch(
                    f"blob {ref.key!r} ({_where(ref)}) in {dst.name} differs from the source object: sha256 "
                    f"{got[:12]}…, source {want[:12]}… (no checksum column: both sides hashed)",
                    "resume the move to copy it again")

    _retried(once, ref, "verifying", *([dst, src] if src is not None else [dst]))


def blob_units(dictionary) -> list[tuple[str, object]]:
    """(table, blob spec) pairs: one unit of work each."""
    return [(name, blob) for name in dictionary.blob_tables() for blob in dictionary.tables[name].blobs]


def find_blob(dictionary, table: str, label: str):
    """The blob of ``table`` named ``label`` (its key column, or a computed key's name)."""
    for blob in dictionary.tables[table].blobs:
        if blob.label == label:
            return blob
    raise KeyError(f"{table}.{label}")


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
                    heartbeat_s: float = 10.0,
                    guard: Callable[[], contextlib.AbstractContextManager] | None = None) -> BlobCopyStats:
    """Copy each batch's objects with ``workers`` threads; ``checkpoint(last_row_key, count, bytes)`` once
    all of a batch has finished (and every batch before it).

    With more than one thread, the next batch is read and started while one finishes, so threads do not
    idle at the end of each batch. On a failure, the objects of the batch finished before the first failed
    one (in key order) are checkpointed, objects not started yet are never started, then the failure is
    raised. While a batch runs longer than ``heartbeat_s``, ``checkpoint(position, 0, 0)`` renews the
    unit's lease without moving its position. ``guard``: a context held while each batch runs (the
    target cell's :data:`~migrator.blobs.shared.BLOB_LOCK`, shared)."""
    stats = BlobCopyStats()
    depth = 2 if workers > 1 else 1
    running: deque[tuple[list, list[Future], contextlib.ExitStack]] = deque()

    def finish_oldest() -> None:
        refs, futures, held = running.popleft()
        with held:
            finish(refs, futures)

    def finish(refs: list, futures: list[Future]) -> None:
        nonlocal position
        while True:
            done, pending = wait(futures, timeout=heartbeat_s, return_when=FIRST_EXCEPTION)
            if not pending or any(f.exception() is not None for f in done):
                break
            checkpoint(position, 0, 0)
        if pending:  # one failed: start nothing more
            for f in [*futures, *(f for _, later, _ in running for f in later)]:
                f.cancel()  # running ones finish (a multipart upload completes or aborts)
            wait([*futures, *(f for _, later, _ in running for f in later)])
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

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="blob-copy") as pool:
            for refs in batches:
                if any(f.done() and f.exception() is not None for _, fs, _ in running for f in fs
                       if not f.cancelled()):
                    break  # something failed already: finish (and raise) before starting more
                held = contextlib.ExitStack()
                if guard is not None:
                    held.enter_context(guard())
                running.append((refs, [pool.submit(copy_one, ref) for ref in refs], held))
                if len(running) >= depth:
                    finish_oldest()
            while running:
                finish_oldest()
    finally:
        while running:  # a failure left batches behind (their futures are done): release what they hold
            running.popleft()[2].close()
    return stats


class _Once:
    """Copies each object once: a key the organization's rows reference again (with the same checksum)
    is counted as skipped. Its first copy is in this batch or an earlier one, checkpointed first."""

    def __init__(self, copy: Callable[[BlobRef], Received]):
        self.copy, self.seen, self.lock = copy, set(), threading.Lock()

    def __call__(self, ref: BlobRef) -> Received:
        with self.lock:
            again = (ref.key, ref.checksum) in self.seen
            self.seen.add((ref.key, ref.checksum))
        return Received(skipped=True) if again else self.copy(ref)


def copy_blob_range(conn, src: BlobStore, dst: BlobStore, spec: TableSpec, blob, org: int, *,
                    position: list | None, batch: int, checkpoint: Callable[[list, int, int], None],
                    workers: int = 1, fresh: bool = False, heartbeat_s: float = 10.0, target=None) -> dict:
    """Copy the objects of one blob column of the organization's rows, from ``position`` on. Returns
    :class:`BlobCopyStats` as a dict. ``target``: the target cell's connection, on which each batch
    holds :data:`~migrator.blobs.shared.BLOB_LOCK` shared (a cleanup there cannot delete an object
    between this copy finding it present and the end of the batch)."""
    stats = copy_in_batches(
        iter_refs(conn, spec, blob, org, after=position, hi=None, batch=batch),
        _Once(lambda ref: copy_blob(src, dst, ref, fresh=fresh)), workers=workers, checkpoint=checkpoint,
        position=position, heartbeat_s=heartbeat_s,
        guard=(lambda: copying_into(target)) if target is not None else None)
    metrics.blob_bytes_read.inc(stats.bytes_read)
    return stats.as_dict()


def verify_blob_range(conn, dst: BlobStore, spec: TableSpec, blob, org: int, *, batch: int, workers: int = 1,
                      heartbeat: Callable[[], None] = lambda: None, src: BlobStore | None = None) -> int:
    """Verify every object of one blob column of the organization's rows; returns how many. Without a
    checksum column each object is compared with ``src``'s (both hashed)."""
    count = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="blob-verify") as pool:
        for refs in iter_refs(conn, spec, blob, org, after=None, hi=None, batch=batch):
            for future in [pool.submit(verify_blob, dst, ref, src) for ref in refs]:
                future.result()
            count += len(refs)
            heartbeat()
    return count


def delete_org_blobs(conn, store: BlobStore, spec: TableSpec, blob, org: int, *, cell, dictionary, specs: dict,
                     batch: int = 500) -> tuple[int, int]:
    """Delete from ``store`` the objects the organization's rows (read from ``conn``) reference that no
    other row of the store's cell (``cell``, its database connection) references
    (:func:`~migrator.blobs.shared.delete_unreferenced`). Returns (deleted, kept because shared)."""
    deleted = kept = 0
    for refs in iter_refs(conn, spec, blob, org, after=None, hi=None, batch=batch):
        d, k = delete_unreferenced(cell, store, dictionary, specs, [r.key for r in refs], org)
        deleted, kept = deleted + d, kept + k
    return deleted, kept
