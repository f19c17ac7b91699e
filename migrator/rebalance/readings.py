"""Capacity readings: what each cell holds, per organization, measured into a cache table.

``refresh_readings`` (celery beat, ``migrator rebalance refresh``) measures every configured cell:
rows per organization in each organization table (grouped by the organization the dictionary leads
each row to), each table's share of the cell's bytes, blob bytes per organization, the database
size, and the moves in and out. The API and the planner read the cache (``cell_readings``,
``org_readings``); nothing is recomputed per request.

An organization's *bytes* are its rows' share of each table's total size (indexes and TOAST
included) plus its blobs. A cell's *load* (what the thresholds apply to) is the sum over the
organizations routed to it; copies of organizations routed elsewhere (sources awaiting cleanup) are
reported as ``reclaimable_bytes`` and do not count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from psycopg import sql

from migrator.cells.introspect import introspect
from migrator.cells.names import qualified
from migrator.config import Settings
from migrator.db import cell_connection, first_line
from migrator.dictionary import load_dictionary
from migrator.errors import MigratorError
from migrator.moves.estimate import estimate
from migrator.rebalance.store import RebalanceStore

log = logging.getLogger(__name__)

_TOTAL_BYTES = """
SELECT COALESCE(SUM(pg_catalog.pg_total_relation_size(r.oid)), 0)
FROM (SELECT %(rel)s::regclass::oid AS oid
      UNION SELECT p.relid::oid FROM pg_catalog.pg_partition_tree(%(rel)s::regclass) p) r
"""


def estimate_window_s(settings: Settings, rows: int, blob_bytes: int, calibration=None) -> float:
    """The write window of a move of this size with the default strategy (the estimate preflight prints;
    ``calibration``: what recent moves measured, migrator/moves/calibration.py; None: the config's rates)."""
    return estimate(settings, None, rows, blob_bytes, calibration)["write_window_estimate_s"]


@dataclass
class OrgMeasure:
    rows: int = 0
    row_bytes: float = 0.0
    blob_bytes: int = 0
    blobs: int = 0


def measure_cell(settings: Settings, cell: str, dictionary) -> tuple[dict, dict[int, OrgMeasure]]:
    """(cell totals, per-organization measures) of one cell database."""
    orgs: dict[int, OrgMeasure] = {}
    tables: dict[str, dict] = {}
    with cell_connection(settings, cell, autocommit=True) as conn:
        live = introspect(conn)
        for table in dictionary.org_tables():
            if table not in live.tables:
                continue
            ident = qualified(table)
            rel = ident.as_string(conn)
            total_bytes = int(conn.execute(_TOTAL_BYTES, {"rel": rel}).fetchone()[0])
            counts = conn.execute(sql.SQL("SELECT {org} AS org, count(*) FROM {t} AS t GROUP BY 1").format(
                org=dictionary.org_of_row_sql(table, live, "t"), t=ident)).fetchall()
            total_rows = sum(int(n) for _, n in counts)
            tables[table] = {"rows": total_rows, "bytes": total_bytes}
            per_row = total_bytes / total_rows if total_rows else 0.0
            for org, n in counts:
                if org is None:
                    continue
                m = orgs.setdefault(int(org), OrgMeasure())
                m.rows += int(n)
                m.row_bytes += int(n) * per_row
        for table in dictionary.blob_tables():
            if table not in live.tables:
                continue
            for blob in dictionary.tables[table].blobs:
                size = sql.SQL("COALESCE(SUM({}), 0)").format(sql.Identifier("t", blob.size)) if blob.size \
                    else sql.SQL("0")
                query = sql.SQL("SELECT {org} AS org, count({key}), {size} FROM {t} AS t "
                                "WHERE {key} IS NOT NULL GROUP BY 1").format(
                    org=dictionary.org_of_row_sql(table, live, "t"), key=blob.key_expr("t"), size=size,
                    t=qualified(table))
                for org, n, b in conn.execute(query):
                    if org is None:
                        continue
                    m = orgs.setdefault(int(org), OrgMeasure())
                    m.blobs += int(n)
                    m.blob_bytes += int(b)
        database_bytes = int(conn.execute("SELECT pg_catalog.pg_database_size(current_database())").fetchone()[0])
    return {"database_bytes": database_bytes, "tables": tables}, orgs


def refresh_readings(settings: Settings, cells: list[str] | None = None, *, topology=None) -> list[dict]:
    """Measure the cells (all configured ones by default) and replace their cached readings."""
    # deferred: the gRPC client is slow to import and only this path needs it
    from migrator.topology.client import topology_client

    store = RebalanceStore(settings.control_dsn)
    dictionary = load_dictionary(settings.dictionary_file())
    own = topology is None
    topology = topology or topology_client(settings)
    try:
        routes = {r.organization_id: r.cell for r in topology.list_routes()}
        registered = {c.name: c.state for c in topology.list_cells()}
    finally:
        if own and hasattr(topology, "close"):
            topology.close()
    moves_in: dict[str, int] = {}
    moves_out: dict[str, int] = {}
    for move in store.active_moves():
        moves_out[move.source_cell] = moves_out.get(move.source_cell, 0) + 1
        moves_in[move.target_cell] = moves_in.get(move.target_cell, 0) + 1
    results = []
    for cell in cells or sorted(settings.cells):
        cfg = settings.cell(cell)
        state = registered.get(cell, "unregistered")
        if cfg.state != "active":
            state = cfg.state
        started = time.monotonic()
        try:
            totals, orgs = measure_cell(settings, cell, dictionary)
        except MigratorError as exc:
            store.save_reading_error(cell, exc.message, state)
            log.warning("readings: cell %s could not be measured: %s", cell, exc.message)
            results.append({"cell": cell, "error": exc.message})
            continue
        except Exception as exc:  # noqa: BLE001 - one bad cell must not stop the others' readings
            store.save_reading_error(cell, first_line(exc), state)
            log.exception("readings: cell %s could not be measured", cell)
            results.append({"cell": cell, "error": first_line(exc)})
            continue
        org_rows, load, reclaimable, n_routed, rows, row_bytes, blob_bytes = [], 0, 0, 0, 0, 0, 0
        for org, m in sorted(orgs.items()):
            total = int(round(m.row_bytes)) + m.blob_bytes
            routed = routes.get(org) == cell
            org_rows.append({"organization_id": org, "routed": routed, "rows": m.rows,
                             "row_bytes": int(round(m.row_bytes)), "blob_bytes": m.blob_bytes, "blobs": m.blobs,
                             "bytes": total})
            if routed:
                n_routed += 1
                load += total
                rows += m.rows
                row_bytes += int(round(m.row_bytes))
                blob_bytes += m.blob_bytes
            else:
                reclaimable += total
        reading = {"cell": cell, "state": state, "organizations": n_routed, "rows": rows, "bytes": load,
                   "row_bytes": row_bytes, "blob_bytes": blob_bytes, "database_bytes": totals["database_bytes"],
                   "reclaimable_bytes": reclaimable, "moves_in": moves_in.get(cell, 0),
                   "moves_out": moves_out.get(cell, 0), "duration_s": round(time.monotonic() - started, 3),
                   "tables": totals["tables"]}
        store.save_reading(reading, org_rows)
        log.info("readings: %s: %d organizations, %d bytes (%.2f s)", cell, n_routed, load, reading["duration_s"])
        results.append({k: v for k, v in reading.items() if k != "tables"})
    return results


def reading_as_dict(r, now=None, *, thresholds=None) -> dict:
    """A cached reading as plain data (API, CLI)."""
    age = None
    if now is not None and r.measured_at is not None:
        age = round((now - r.measured_at).total_seconds(), 1)
    data = {
        "cell": r.cell, "state": r.state, "organizations": r.organizations, "rows": r.rows, "bytes": r.bytes,
        "row_bytes": r.row_bytes, "blob_bytes": r.blob_bytes, "database_bytes": r.database_bytes,
        "reclaimable_bytes": r.reclaimable_bytes, "moves_in": r.moves_in, "moves_out": r.moves_out,
        "measured_at": r.measured_at.isoformat() if r.measured_at else None, "age_s": age,
        "duration_s": r.duration_s, "error": r.error,
    }
    if thresholds is not None:
        data["thresholds"] = {"high_water_bytes": thresholds.high_water_bytes,
                              "low_water_bytes": thresholds.low_water_bytes,
                              "high_water_orgs": thresholds.high_water_orgs,
                              "low_water_orgs": thresholds.low_water_orgs}
        hot = (thresholds.high_water_bytes is not None and r.bytes > thresholds.high_water_bytes) or \
            (thresholds.high_water_orgs is not None and r.organizations > thresholds.high_water_orgs)
        data["hot"] = bool(hot)
    return data
