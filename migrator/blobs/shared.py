"""Objects shared between organizations: delete one only when no remaining row of the cell references it.

Content-addressed objects (deduplicated LFS objects, a key computed from the object's digest) are
referenced by rows of several organizations of one cell. Cleanup (the source copy of a completed
move) and abort (the partial target copy) delete the objects the organization's rows reference, but
only the ones that no row of another organization (or of none) in that cell references, in any
blob table of the dictionary.

The check and the deletion run in one transaction on the cell's database holding
:data:`BLOB_LOCK` exclusively; every copy of objects *into* a cell (copy_blobs, the catch-up's
changed blobs) holds it shared while a batch runs (:func:`copying_into`). A move of another
organization into the cell copies its rows first, then its objects: either its rows are committed
before the check (the object is kept), or its copy waits for the deletion and then finds the object
gone (and copies it). Without the lock, the copy could find the object present, skip it, and see it
deleted a moment later. The application's own writes take no such lock: an application that
deduplicates objects on upload must not reference an object of an organization being cleaned up
(docs/dictionary.md, Shared objects).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from psycopg import sql

from migrator.blobs.store import BlobStore

log = logging.getLogger(__name__)

# pg_advisory lock (two int4 keys) serializing object deletions with copies into a cell: "blob", 0.
BLOB_LOCK = (0x626C6F62, 0)


@contextlib.contextmanager
def copying_into(conn) -> Iterator[None]:
    """Hold :data:`BLOB_LOCK` shared on the target cell's connection ``conn`` (a session lock, released
    on exit; taken again by the same session, it stacks)."""
    conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", BLOB_LOCK)
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock_shared(%s, %s)", BLOB_LOCK)


def referenced_keys(conn, dictionary, specs: dict, keys: list[str], org: int) -> set[str]:
    """The ``keys`` that a row of the cell (``conn``) not of organization ``org`` references, in any blob
    table of the dictionary (rows that lead to no organization count as references)."""
    if not keys:
        return set()
    found: set[str] = set()
    for table in dictionary.blob_tables():
        spec = specs.get(table)
        if spec is None:
            continue
        for blob in dictionary.tables[table].blobs:
            left = [k for k in keys if k not in found]
            if not left:
                return found
            q = sql.SQL("SELECT u.k FROM unnest(%(keys)s::text[]) AS u(k) WHERE EXISTS ("
                        "SELECT 1 FROM {table} AS t WHERE {key} = u.k AND NOT coalesce(({mine}), false))").format(
                table=spec.ident, key=blob.key_expr("t"), mine=spec.predicate)
            found.update(r[0] for r in conn.execute(q, {"keys": left, "org": org}))
    return found


def delete_unreferenced(conn, store: BlobStore, dictionary, specs: dict, keys: Iterable[str],
                        org: int) -> tuple[int, int]:
    """Delete from ``store`` the ``keys`` (of organization ``org``'s rows) that no other row of the cell
    (``conn``) references, under :data:`BLOB_LOCK`. Returns (deleted, kept because shared)."""
    unique = sorted(set(keys))
    if not unique:
        return 0, 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", BLOB_LOCK)
        shared = referenced_keys(conn, dictionary, specs, unique, org)
        deleted = store.delete_many(k for k in unique if k not in shared)
    if shared:
        log.info("%s: kept %d object(s) other organizations' rows reference, e.g. %s", store.name, len(shared),
                 min(shared))
    return deleted, len(shared)
