"""Provisioning cells (``migrator cells init``) and reading their size (``migrator cells list``).

For each cell ``init_cells``: checks its blob store, connects to its database, registers it in the
Topology Service (which hands out a disjoint sequence range per cell), then in one transaction
applies the sample application schema (unless the cell is ``adopt``-ed or already has the
``organizations`` table), claims the schema ``migrator`` for the migrator's own objects, records the
cell's identity in ``migrator.cell_info``, installs the freeze guard and moves every sequence of the
cell into the cell's range, so rows keep their IDs when they move between cells.

An ``adopt``-ed cell (one that already runs the application) keeps its schema *and* its sequences:
they are only checked against the range (``--set-sequences`` sets them, recording their original
bounds so that ``uninstall_cells`` can restore them). Everything is idempotent: a second run
changes nothing. ``uninstall_cells`` removes all the migrator installed (migrator/cells/uninstall.py).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from migrator.blobs.store import open_store
from migrator.cells.capture import install_capture
from migrator.cells.guard import install_guard
from migrator.cells.introspect import LiveSchema, introspect
from migrator.cells.names import qualified, regclass_text
from migrator.cells.namespace import claim_namespace
from migrator.cells.sequences import (
    OUTSIDE,
    SKIPPED,
    UNBOUNDED,
    SequenceRangeError,
    check_sequences,
    set_sequence_ranges,
)
from migrator.cells.uninstall import uninstall_cell
from migrator.control.engine import upgrade_control_db
from migrator.db import cell_connection
from migrator.dictionary.model import Dictionary, load_dictionary
from migrator.errors import ConfigError
from migrator.sample import SAMPLE_ROOT_TABLE, SAMPLE_SCHEMA_PATH

log = logging.getLogger(__name__)

__all__ = ["SequenceRangeError", "apply_sample_schema", "cell_stats", "init_cells", "set_sequence_ranges",
           "uninstall_cells"]

APP_SCHEMA = "public"
_INIT_LOCK = 0x6D67696E69740000  # "mginit": one init per cell database at a time
# Below this many estimated rows a table is counted exactly.
EXACT_COUNT_BELOW = 200_000


_CELL_INFO_DDL = """
CREATE TABLE IF NOT EXISTS migrator.cell_info (key text PRIMARY KEY, value text NOT NULL);
"""

def _table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    return conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
                        (sql.Identifier(schema, table).as_string(conn),)).fetchone()[0]


def apply_sample_schema(conn: psycopg.Connection) -> bool:
    """Create the sample application's tables unless ``organizations`` exists; True if applied."""
    if _table_exists(conn, APP_SCHEMA, SAMPLE_ROOT_TABLE):
        return False
    conn.execute(SAMPLE_SCHEMA_PATH.read_text())
    return True


def _record_cell_info(conn: psycopg.Connection, name: str, lo: int, hi: int, adopt: bool = False) -> None:
    conn.execute(_CELL_INFO_DDL)
    row = conn.execute("SELECT value FROM migrator.cell_info WHERE key = 'cell'").fetchone()
    if row is not None and row[0] != name:
        raise ConfigError(
            f"the database configured for cell {name!r} already belongs to cell {row[0]!r}",
            "two cells must never share a database: fix the dsn of one of them in the config",
        )
    conn.execute(
        """INSERT INTO migrator.cell_info (key, value)
           VALUES ('cell', %s), ('installed_at', now()::text), ('seq_min', %s), ('seq_max', %s), ('mode', %s)
           ON CONFLICT (key) DO NOTHING""",
        (name, str(lo), str(hi), "adopted" if adopt else "provisioned"),
    )


def _init_one(settings, name: str, dictionary: Dictionary, topology, *, set_sequences: bool = False) -> dict:

    cfg = settings.cell(name)
    store = open_store(settings, name)
    store.check()
    with cell_connection(settings, name) as conn:
        info = topology.register_cell(name, address=cfg.masked_dsn(), state=cfg.state)
        lo, hi = int(info.seq_min), int(info.seq_max)
        with conn.transaction():
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
            schema_applied = False if cfg.adopt else apply_sample_schema(conn)
            namespace_changed = claim_namespace(conn, name)
            _record_cell_info(conn, name, lo, hi, adopt=cfg.adopt)
            live = introspect(conn)
            guard = install_guard(conn, dictionary, live)
            capture_tables = install_capture(conn, dictionary, live)
            if cfg.adopt:
                # An adopted cell's sequences are the application's: look, and change them only when asked.
                states = check_sequences(conn, lo, hi, dictionary=dictionary)
                wanted = {s.name for s in states if s.status in (OUTSIDE, UNBOUNDED)}
                sequences = set_sequence_ranges(conn, lo, hi, only=wanted, record=True) \
                    if set_sequences and wanted else []
                if sequences:
                    states = check_sequences(conn, lo, hi, dictionary=dictionary)
            else:
                sequences = set_sequence_ranges(conn, lo, hi)
                states = check_sequences(conn, lo, hi)
    outside = [s.as_dict() for s in states if s.status == OUTSIDE]
    result = {
        "cell": name,
        "state": info.state,
        "adopt": cfg.adopt,
        "schema_applied": schema_applied,
        "namespace_created": namespace_changed,
        "guard_installed": guard.did_change,
        "guard_tables": len(guard.tables),
        "guard_missing_tables": guard.missing,
        "capture_tables": len(capture_tables),
        "sequences_set": len(sequences),
        # the sequences that feed organization tables (those init sets or checks); the others are skipped
        "sequences": sum(1 for s in states if s.status != SKIPPED),
        "sequences_skipped": [s.as_dict() for s in states if s.status == SKIPPED],
        "sequences_outside": outside,
        "sequences_unbounded": [s.as_dict() for s in states if s.status == UNBOUNDED],
        "sequences_ok": not outside,
        "range": [lo, hi],
        "blob_store": store.describe(),
    }
    log.info("cell %s provisioned: %s", name, result)
    return result


def init_cells(settings, names: list[str] | None = None, *, set_sequences: bool = False) -> list[dict]:
    """Provision the configured cells (or only ``names``); one result dict per cell, in order.

    An ``adopt``-ed cell keeps its schema and its sequences: ``sequences_outside`` lists those whose
    next value is outside the cell's ID range, and ``set_sequences`` moves them (and the unbounded
    ones) into it.
    """
    # deferred: the gRPC client is slow to import and only this path needs it
    from migrator.topology.client import topology_client

    selected = list(names) if names else list(settings.cells)
    if not selected:
        raise ConfigError("no cells are configured", "add cells under 'cells:' in the config")
    for name in selected:
        settings.cell(name)  # UnknownCell before touching anything
    dictionary = load_dictionary(settings.dictionary_file())
    # The control database's schema first (idempotent), so a fresh install needs no other step.

    upgrade_control_db(settings.control_dsn)
    topology = topology_client(settings)
    try:
        return [_init_one(settings, name, dictionary, topology, set_sequences=set_sequences) for name in selected]
    finally:
        close = getattr(topology, "close", None)
        if close is not None:
            close()


def uninstall_cells(settings, names: list[str] | None = None, *, force: bool = False) -> list[dict]:
    """Remove everything the migrator installed in the cells (or only ``names``); see cells/uninstall.py."""
    selected = list(names) if names else list(settings.cells)
    if not selected:
        raise ConfigError("no cells are configured", "add cells under 'cells:' in the config")
    for name in selected:
        settings.cell(name)
    dictionary = load_dictionary(settings.dictionary_file(), strict=False)
    results = []
    for name in selected:
        with cell_connection(settings, name) as conn:
            results.append({"cell": name, **uninstall_cell(conn, dictionary, cell=name, force=force)})
    return results


# The table itself and, when it is partitioned, every partition under it.
_ROW_ESTIMATE = """
SELECT COALESCE(SUM(GREATEST(c.reltuples, 0)), 0)::bigint, COALESCE(bool_and(c.reltuples >= 0), false)
FROM pg_catalog.pg_class c
WHERE c.relkind = 'r' AND c.oid IN (SELECT %(rel)s::regclass::oid
                                    UNION SELECT p.relid::oid FROM pg_catalog.pg_partition_tree(%(rel)s::regclass) p)
"""
_TOTAL_BYTES = """
SELECT COALESCE(SUM(pg_catalog.pg_total_relation_size(r.oid)), 0)
FROM (SELECT %(rel)s::regclass::oid AS oid
      UNION SELECT p.relid::oid FROM pg_catalog.pg_partition_tree(%(rel)s::regclass) p) r
"""


def _table_rows(conn: psycopg.Connection, table: str) -> tuple[int, bool]:
    """(rows, estimated): an exact count for small tables, the planner's estimate for big ones."""
    rel = regclass_text(table, conn)
    est, analyzed = conn.execute(_ROW_ESTIMATE, {"rel": rel}).fetchone()
    if analyzed and est >= EXACT_COUNT_BELOW:
        return int(est), True
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qualified(table))).fetchone()[0], False


def _table_bytes(conn: psycopg.Connection, table: str) -> int:
    rel = regclass_text(table, conn)
    return int(conn.execute(_TOTAL_BYTES, {"rel": rel}).fetchone()[0])


def table_stats(conn: psycopg.Connection, dictionary: Dictionary, live: LiveSchema) -> dict[str, dict]:
    stats = {}
    for table in dictionary.org_tables():
        if table not in live.tables:
            continue
        rows, estimated = _table_rows(conn, table)
        stats[table] = {"rows": rows, "estimated": estimated, "bytes": _table_bytes(conn, table)}
    return stats


def cell_stats(settings, name: str, dictionary: Dictionary | None = None) -> dict:
    """Organizations, rows and bytes per organization table, and the database size of one cell."""
    dictionary = dictionary or load_dictionary(settings.dictionary_file())
    with cell_connection(settings, name, autocommit=True) as conn:
        live = introspect(conn)
        tables = table_stats(conn, dictionary, live)
        root = tables.get(dictionary.root_table, {})
        database_bytes = conn.execute("SELECT pg_catalog.pg_database_size(current_database())").fetchone()[0]
    return {
        "cell": name,
        "organizations": root.get("rows", 0),
        "tables": tables,
        "rows": sum(t["rows"] for t in tables.values()),
        "org_bytes": sum(t["bytes"] for t in tables.values()),
        "bytes": int(database_bytes),
    }
