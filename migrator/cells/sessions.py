"""Sessions of a cell's database: which transactions are still open since a moment.

Used where a step must wait out every transaction that began before it changed something: drain
(after the freeze) and capture (after change capture started).
"""

from __future__ import annotations


def open_transactions_before(conn, since) -> list[dict]:
    """Sessions of this database whose transaction began before ``since``, and every prepared
    transaction (its PREPARE time says nothing about when it began, so all of them are waited for)."""
    rows = conn.execute(
        """
        SELECT pid, coalesce(application_name, ''), xact_start, state
          FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_type = 'client backend' AND xact_start IS NOT NULL AND xact_start < %(since)s
        UNION ALL
        SELECT NULL, 'prepared:' || gid, prepared, 'prepared'
          FROM pg_prepared_xacts WHERE database = current_database()
        """,
        {"since": since},
    ).fetchall()
    return [{"pid": r[0], "application": r[1], "xact_start": str(r[2]), "state": r[3]} for r in rows]
