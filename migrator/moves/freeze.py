"""freeze and drain: make the organization read-only, then wait out every earlier transaction.

Two layers (docs/adr/0003-freeze-and-drain.md): the Topology Service marks the route frozen under
the move's token (the router answers writes with "read-only, retry"), and the freeze guard in the
cell databases refuses any write to the organization's rows with SQLSTATE MG001. Drain then waits
until no transaction that began before the freeze is still open in the source, so nothing can
commit behind the copy. Both steps can run any number of times.
"""

from __future__ import annotations

import logging
import time

from migrator.errors import DrainTimeout

log = logging.getLogger(__name__)


def freeze(ctx) -> None:
    from migrator.cells.guard import freeze_org

    move = ctx.move
    route = ctx.topology.freeze(ctx.org, ctx.token, expected_cell=move.source_cell, actor=f"move {move.id}",
                                reason=move.reason or "move")
    for cell in (move.source_cell, move.target_cell):
        conn = ctx.cell_conn(cell)
        freeze_org(conn, ctx.org, ctx.token)
    src = ctx.source()
    frozen_clock = src.execute("SELECT clock_timestamp()").fetchone()[0]
    fields = {"route_version": route.version}
    if move.frozen_at is None:
        from sqlalchemy import func

        fields["frozen_at"] = func.now()
    ctx.store.set_fields(move.id, ctx.token, **fields)
    ctx.store.merge_json(move.id, ctx.token, "report", {"source_frozen_clock": frozen_clock.isoformat()})


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


def drain(ctx) -> None:
    import datetime as dt

    move = ctx.store.get(ctx.move.id)
    since = (move.report or {}).get("source_frozen_clock")
    if since is None:
        raise DrainTimeout(f"move {move.id}: no freeze time recorded", "resume the move so freeze runs again")
    since = dt.datetime.fromisoformat(since)
    src = ctx.source()
    timeout = ctx.settings.moves.drain_timeout_s
    deadline = time.monotonic() + timeout
    waited = 0.0
    while True:
        open_tx = open_transactions_before(src, since)
        if not open_tx:
            ctx.store.merge_json(move.id, ctx.token, "report", {"drain_waited_s": round(waited, 3)})
            return
        if time.monotonic() > deadline:
            shown = ", ".join(f"pid {t['pid']} ({t['application'] or '?'}, {t['state']}, since {t['xact_start']})"
                              for t in open_tx[:5])
            raise DrainTimeout(
                f"cell {move.source_cell!r}: {len(open_tx)} transaction(s) begun before the freeze still open "
                f"after {timeout:.0f}s: {shown}",
                "end or terminate those sessions (pg_terminate_backend), then `migrator resume`; "
                "see docs/runbooks/move-stuck.md",
            )
        ctx.heartbeat()
        time.sleep(0.2)
        waited += 0.2
