"""copy_blobs: every object the organization's rows reference, checksummed on arrival.

Blob-bearing tables name their key and checksum columns in the dictionary. Rows are read in key
order in batches; for each referenced object: skip it when the target already has an identical one
(same sha256), else stream it source -> target and compare the sha256 of what was written with the
row's checksum. A referenced object missing from the source fails the move naming the key and row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from psycopg import sql

from migrator.blobs.store import BlobStore
from migrator.copy.spec import INDEX, TableSpec, choose_path, json_key, org_scan
from migrator.errors import BlobChecksumMismatch, BlobMissing

log = logging.getLogger(__name__)


# Batches of blob references read per query on the index path (each query sorts what it reads).
READ_AHEAD = 50


@dataclass(frozen=True)
class BlobRef:
    table: str
    row_key: list
    key: str
    checksum: str | None
    size: int | None


def iter_refs(conn, spec: TableSpec, blob, org: int, *, after: list | None, hi: list | None,
              batch: int) -> Iterator[list[BlobRef]]:
    """Batches of blob references of the organization's rows of one table, in key order.

    On the index path each query reads the organization's rows after ``after`` and sorts them (ADR
    0017), so it fetches ``READ_AHEAD`` batches at a time (yielded one by one, each resumable from
    its last key as before) instead of re-reading them for every batch.
    """
    size = sql.Identifier("t", blob.size) if blob.size else sql.SQL("NULL::bigint")
    key, checksum = sql.Identifier("t", blob.key), sql.Identifier("t", blob.checksum)
    cols = sql.SQL(", ").join([spec.pk_cols("t"), key, checksum, *([size] if blob.size else [])])
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
        refs = [BlobRef(spec.name, json_key(r[:npk]), r[npk], r[npk + 1], r[npk + 2]) for r in rows]
        for i in range(0, len(refs), batch):
            yield refs[i:i + batch]
        if len(rows) < fetch:
            return
        after = refs[-1].row_key


def _where(ref: BlobRef) -> str:
    return f"{ref.table} row ({', '.join(map(str, ref.row_key))})"


def copy_blob(src: BlobStore, dst: BlobStore, ref: BlobRef) -> int:
    """Copy one object unless an identical one is there. Returns bytes written (0 when skipped)."""
    present = dst.stat(ref.key)
    if present is not None and ref.checksum and dst.sha256(ref.key) == ref.checksum:
        return 0
    if src.stat(ref.key) is None:
        raise BlobMissing(
            f"blob {ref.key!r} referenced by {_where(ref)} is missing from {src.name}",
            "restore the object in the source store (or fix the row), then `migrator resume`",
        )
    with src.open(ref.key) as stream:
        digest, size = dst.put_stream(ref.key, stream)
    if ref.checksum and digest != ref.checksum:
        dst.delete(ref.key)
        raise BlobChecksumMismatch(
            f"blob {ref.key!r} ({_where(ref)}): sha256 {digest[:12]}… after copy, row says {ref.checksum[:12]}…",
            "the source object is corrupt or the row is wrong; repair it, then `migrator resume`",
        )
    return size


def verify_blob(dst: BlobStore, ref: BlobRef) -> None:
    if dst.stat(ref.key) is None:
        raise BlobMissing(f"blob {ref.key!r} ({_where(ref)}) is missing from {dst.name} after the copy",
                          "resume the move: copy_blobs runs again for missing objects")
    if ref.checksum and dst.sha256(ref.key) != ref.checksum:
        raise BlobChecksumMismatch(f"blob {ref.key!r} ({_where(ref)}) in {dst.name} does not match its checksum",
                                   "resume the move to copy it again")


def blob_units(dictionary) -> list[tuple[str, object]]:
    """(table, blob spec) pairs: one unit of work each."""
    return [(name, blob) for name in dictionary.blob_tables() for blob in dictionary.tables[name].blobs]


def find_blob(dictionary, table: str, key_column: str):
    for blob in dictionary.tables[table].blobs:
        if blob.key == key_column:
            return blob
    raise KeyError(f"{table}.{key_column}")


def copy_blob_range(conn, src: BlobStore, dst: BlobStore, spec: TableSpec, blob, org: int, *,
                    position: list | None, batch: int, checkpoint: Callable[[list, int, int], None]) -> None:
    for refs in iter_refs(conn, spec, blob, org, after=position, hi=None, batch=batch):
        written = sum(copy_blob(src, dst, ref) for ref in refs)
        checkpoint(refs[-1].row_key, len(refs), written)


def delete_org_blobs(conn, store: BlobStore, spec: TableSpec, blob, org: int, batch: int = 500) -> int:
    """Delete from ``store`` every object the organization's rows (read from ``conn``) reference."""
    deleted = 0
    for refs in iter_refs(conn, spec, blob, org, after=None, hi=None, batch=batch):
        deleted += store.delete_many(r.key for r in refs)
    return deleted
