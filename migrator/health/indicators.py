"""The health indicators of one cell: each reads PostgreSQL's own statistics and answers a signal.

- ``replication_lag``: replay lag of the primary's standbys (``pg_stat_replication``) and of each
  configured standby (``cells.X.standbys``: ``now() - pg_last_xact_replay_timestamp()`` while it has
  received WAL it has not replayed), in seconds.
- ``wal_ready``: WAL segments waiting for the archiver (``pg_ls_archive_statusdir()``).
- ``autovacuum``: an autovacuum worker on a table the unit reads or writes, or on one of its
  partitions (``pg_stat_progress_vacuum``).
- ``active_backends``: active client backends as a fraction of ``max_connections``.
- ``lock_waits``: backends waiting for a lock.
- ``canary``: the p99 of a configured query, in milliseconds.
- ``commit_latency``: the p99 of a transaction that writes one WAL record and waits for its flush
  (``pg_logical_emit_message``), in milliseconds: the latency every other organization's writes
  pay when the disk is saturated.

The canary and the commit latency keep their last ``canary_window`` samples per worker process: their
p99 is over that rolling window, not over one reading's few samples.

A statistic the migrator's role may not read (``pg_monitor`` grants them all) answers normal with a
detail saying so; an unreachable cell answers normal as well: the unit then meets the outage itself
and reports it as it always has (docs/adr/0019-health-indicators.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

import psycopg

from migrator.cells.names import TableName
from migrator.config import HealthLimits
from migrator.db import connect, first_line
from migrator.dsn import mask_dsn
from migrator.health.signals import Reading, Signal, classify, p99

log = logging.getLogger(__name__)


def _reading(cell: str, indicator: str, value: float | None, slow, stop, unit: str, detail: str = "") -> Reading:
    signal, limit = classify(value, slow, stop)
    return Reading(cell, indicator, signal, value, limit, unit, detail, slow, stop)


def _unavailable(cell: str, indicator: str, exc: Exception) -> Reading:
    log.warning("health %s of %s: not readable: %s", indicator, cell, first_line(exc))
    return Reading(cell, indicator, Signal.NORMAL, detail=f"not readable: {first_line(exc)}")


def replication_lag(conn: psycopg.Connection, cell: str, limits: HealthLimits) -> Reading:
    """The largest replay lag among the standbys the primary streams to (0 with none, or caught up)."""
    try:
        rows = conn.execute(
            "SELECT application_name, COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8 FROM pg_stat_replication"
        ).fetchall()
    except psycopg.Error as exc:
        return _unavailable(cell, "replication_lag", exc)
    if not rows:
        return Reading(cell, "replication_lag", Signal.NORMAL, 0.0, None, "s", "no standby",
                       limits.replication_lag_slow_s, limits.replication_lag_stop_s)
    name, lag = max(rows, key=lambda r: r[1])
    return _reading(cell, "replication_lag", round(lag, 3), limits.replication_lag_slow_s,
                    limits.replication_lag_stop_s, "s", f"standby {name or '?'}")


STANDBY_LAG_SQL = """
SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
            ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8
"""


def standby_lag(dsn: str, cell: str, limits: HealthLimits, timeout_s: float) -> Reading:
    """The replay lag of one configured standby: how old its last replayed transaction is while WAL it
    received waits to be replayed (0 when it has replayed everything it received)."""
    where = mask_dsn(dsn)
    try:
        with connect(dsn, what=f"standby of {cell}", autocommit=True, connect_timeout=max(1, round(timeout_s))) as c:
            (lag,) = c.execute(STANDBY_LAG_SQL).fetchone()
    except Exception as exc:  # noqa: BLE001 - a standby we cannot read does not stop moves
        return _unavailable(cell, "replication_lag", exc)
    if lag is None:
        return Reading(cell, "replication_lag", Signal.NORMAL, detail=f"{where} is not a standby")
    return _reading(cell, "replication_lag", round(lag, 3), limits.replication_lag_slow_s,
                    limits.replication_lag_stop_s, "s", f"standby {where}")


def wal_ready(conn: psycopg.Connection, cell: str, limits: HealthLimits) -> Reading:
    try:
        (n,) = conn.execute("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%%.ready'").fetchone()
    except psycopg.Error as exc:
        return _unavailable(cell, "wal_ready", exc)
    return _reading(cell, "wal_ready", int(n), limits.wal_ready_slow, limits.wal_ready_stop, "segments",
                    "waiting for the archiver")


def autovacuum(conn: psycopg.Connection, cell: str, limits: HealthLimits, tables: Sequence[str]) -> Reading:
    if not tables or limits.autovacuum_on_table == "normal":
        return Reading(cell, "autovacuum", Signal.NORMAL)
    names = [TableName.parse(t).ident.as_string(conn) for t in tables]  # "schema"."table", quoted
    try:
        rows = conn.execute(
            "WITH t AS (SELECT to_regclass(x) AS oid FROM unnest(%s::text[]) AS x WHERE to_regclass(x) IS NOT NULL),"
            "     rel AS (SELECT oid FROM t UNION SELECT p.relid FROM t, pg_partition_tree(t.oid) AS p)"
            " SELECT v.relid::regclass::text, coalesce(a.query, '') LIKE '%%to prevent wraparound%%'"
            "   FROM pg_stat_progress_vacuum v JOIN pg_stat_activity a ON a.pid = v.pid"
            "  WHERE a.backend_type = 'autovacuum worker' AND v.relid IN (SELECT oid FROM rel)",
            [names],
        ).fetchall()
    except psycopg.Error as exc:
        return _unavailable(cell, "autovacuum", exc)
    if not rows:
        return Reading(cell, "autovacuum", Signal.NORMAL)
    table, wraparound = rows[0]
    signal = Signal.STOP if wraparound or limits.autovacuum_on_table == "stop" else Signal.SLOW_DOWN
    return Reading(cell, "autovacuum", signal, len(rows), None, "tables",
                   f"on {table}{' to prevent wraparound' if wraparound else ''}")


def backends(conn: psycopg.Connection, cell: str, limits: HealthLimits) -> list[Reading]:
    try:
        active, waiting, max_conn = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'active' AND backend_type = 'client backend'"
            "                          AND pid <> pg_backend_pid()),"
            "       count(*) FILTER (WHERE wait_event_type = 'Lock'),"
            "       current_setting('max_connections')::int FROM pg_stat_activity"
        ).fetchone()
    except psycopg.Error as exc:
        return [_unavailable(cell, "active_backends", exc), _unavailable(cell, "lock_waits", exc)]
    return [
        _reading(cell, "active_backends", round(active / max_conn, 3), limits.active_backends_slow,
                 limits.active_backends_stop, "fraction", f"{active} of max_connections {max_conn}"),
        _reading(cell, "lock_waits", int(waiting), limits.lock_waits_slow, limits.lock_waits_stop, "backends",
                 "waiting for a lock"),
    ]


_windows: dict[tuple[str, str], deque] = {}
_windows_lock = threading.Lock()


def _window(cell: str, indicator: str, size: int, samples: list[float]) -> list[float]:
    """Add ``samples`` to the rolling window of (cell, indicator) in this process; the window's samples."""
    with _windows_lock:
        window = _windows.get((cell, indicator))
        if window is None or window.maxlen != size:
            window = _windows[(cell, indicator)] = deque(window or (), maxlen=size)
        window.extend(samples)
        return list(window)


def _timed(conn: psycopg.Connection, query: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        conn.execute(query).fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def canary(conn: psycopg.Connection, cell: str, limits: HealthLimits) -> Reading:
    if not limits.canary_sql:
        return Reading(cell, "canary", Signal.NORMAL)
    try:
        samples = _window(cell, "canary", limits.canary_window, _timed(conn, limits.canary_sql, limits.canary_samples))
    except psycopg.Error as exc:
        return _unavailable(cell, "canary", exc)
    return _reading(cell, "canary", round(p99(samples), 2), limits.canary_p99_slow_ms, limits.canary_p99_stop_ms,
                    "ms", f"p99 of the last {len(samples)}")


# One WAL record in a transaction of its own (autocommit): the commit waits for its flush.
COMMIT_PROBE_SQL = "SELECT pg_logical_emit_message(true, 'cells-migrator-health', '')"


def commit_latency(conn: psycopg.Connection, cell: str, limits: HealthLimits) -> Reading:
    if limits.commit_p99_slow_ms is None and limits.commit_p99_stop_ms is None:
        return Reading(cell, "commit_latency", Signal.NORMAL)
    try:
        samples = _window(cell, "commit_latency", limits.canary_window,
                          _timed(conn, COMMIT_PROBE_SQL, limits.commit_samples))
    except psycopg.Error as exc:
        return _unavailable(cell, "commit_latency", exc)
    return _reading(cell, "commit_latency", round(p99(samples), 2), limits.commit_p99_slow_ms,
                    limits.commit_p99_stop_ms, "ms", f"p99 of the last {len(samples)}")


def read_cell(dsn: str, cell: str, limits: HealthLimits, *, tables: Sequence[str] = (),
              standbys: Sequence[str] = (), timeout_s: float = 3.0) -> list[Reading]:
    """Every indicator of one cell (the cell's primary at ``dsn``, its configured ``standbys``)."""
    try:
        conn = connect(dsn, what=f"cell {cell}", autocommit=True, connect_timeout=max(1, round(timeout_s)))
    except Exception as exc:  # noqa: BLE001 - the unit meets the outage itself and reports it
        return [Reading(cell, "reachable", Signal.NORMAL, detail=f"no reading: {first_line(exc)}")]
    with conn:
        readings = [replication_lag(conn, cell, limits), wal_ready(conn, cell, limits),
                    autovacuum(conn, cell, limits, tables), *backends(conn, cell, limits), canary(conn, cell, limits),
                    commit_latency(conn, cell, limits)]
    readings += [standby_lag(s, cell, limits, timeout_s) for s in standbys]
    return readings
