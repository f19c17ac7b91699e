"""The online strategy's own steps: capture, catch_up, final_delta (docs/adr/0009-online-moves.md).

capture: start logging the organization's changes in the source, then wait until every transaction
that began before the capture has ended (so no change can commit unlogged behind the bulk copy).
catch_up: apply the log to the target in rounds until what is left is small (keys and estimated
time, config ``online``): no write downtime is paid while the delta is still large.
final_delta: after freeze and drain, one last round; then verify compares full checksums.
The capture is removed at unfreeze and on abort; the reconciler removes captures of moves that ended.
"""

from __future__ import annotations

import logging
import time

from psycopg import sql

from migrator.blobs.copier import BlobRef, blob_units, copy_blob
from migrator.blobs.store import open_store, same_store
from migrator.cells import capture as cap
from migrator.copy.delta import apply_round, logged_keys_sql
from migrator.errors import MigratorError
from migrator.moves.freeze import open_transactions_before

log = logging.getLogger(__name__)


def capture_id(move) -> str:
    return str(move.id)


def _state(ctx) -> dict:
    return dict((ctx.store.get(ctx.move.id).report or {}).get("catch_up") or {"applied": 0, "rounds": 0})


def capture(ctx) -> None:
    src = ctx.source()
    if not src.execute("SELECT to_regclass('migrator.captures') IS NOT NULL").fetchone()[0]:
        raise MigratorError(f"cell {ctx.move.source_cell!r} has no change capture installed",
                            "run `migrator cells init` (it installs the capture triggers), then resume")
    cap.start_capture(src, ctx.org, capture_id(ctx.move), str(ctx.move.id))
    since = src.execute("SELECT clock_timestamp()").fetchone()[0]
    deadline = time.monotonic() + ctx.settings.moves.drain_timeout_s
    while open_transactions_before(src, since):
        if time.monotonic() > deadline:
            # Not a failure of the organization's availability: nothing is frozen yet. Try again later.
            raise MigratorError(
                f"cell {ctx.move.source_cell!r}: transactions begun before the capture are still open after "
                f"{ctx.settings.moves.drain_timeout_s:.0f}s", "see docs/runbooks/move-stuck.md; then resume")
        ctx.heartbeat()
        time.sleep(0.2)
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {"capture_started": since.isoformat()})


def _copy_changed_blobs(ctx, src, after: int, upto: int) -> int:
    """Blobs referenced by rows that changed in this round (copy_blob skips identical ones)."""
    src_store, dst_store = open_store(ctx.settings, ctx.move.source_cell), open_store(ctx.settings,
                                                                                      ctx.move.target_cell)
    if same_store(src_store, dst_store):
        return 0
    copied = 0
    for table, blob in blob_units(ctx.dictionary):
        spec = ctx.specs[table]
        keys = logged_keys_sql(spec)
        params = {"tbl": table, "cap": capture_id(ctx.move), "after": after, "upto": upto, "org": ctx.org}
        q = sql.SQL("SELECT {pk}, {key}, {sha}, {size} FROM {t} AS t WHERE ({pred}) AND ({pk}) IN ({keys})"
                    " AND {key} IS NOT NULL").format(
            pk=spec.pk_cols("t"), key=sql.Identifier("t", blob.key), sha=sql.Identifier("t", blob.checksum),
            size=sql.Identifier("t", blob.size) if blob.size else sql.SQL("NULL::bigint"), t=spec.ident,
            pred=spec.predicate, keys=keys)
        n = len(spec.pk)
        for row in src.execute(q, params):
            copied += bool(copy_blob(src_store, dst_store, BlobRef(table, list(row[:n]), row[n], row[n + 1],
                                                                   row[n + 2])))
    return copied


def _round(ctx, state: dict, upto: int) -> dict:
    src, tgt = ctx.source(), ctx.target()
    started = time.monotonic()
    result = apply_round(src, tgt, ctx.specs, ctx.copy_order(), ctx.org, capture_id(ctx.move), state["applied"],
                         upto)
    blobs = _copy_changed_blobs(ctx, src, state["applied"], upto)
    seconds = time.monotonic() - started
    state.update(applied=upto, rounds=state["rounds"] + 1, last_keys=result.total_keys,
                 last_round_s=round(seconds, 3), keys_per_s=round(result.total_keys / seconds, 1) if seconds else None)
    state["keys_applied"] = state.get("keys_applied", 0) + result.total_keys
    state["blobs_copied"] = state.get("blobs_copied", 0) + blobs
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {"catch_up": state})
    return state


def catch_up(ctx) -> None:
    cfg = ctx.settings.online
    state = _state(ctx)
    src = ctx.source()
    last_note = time.monotonic()
    while True:
        head = cap.log_head(src, capture_id(ctx.move))
        pending = cap.pending_keys(src, capture_id(ctx.move), state["applied"], head)
        rate = state.get("keys_per_s") or cfg.assumed_keys_per_s
        estimate = pending / rate if rate else 0.0
        if pending <= cfg.max_delta_keys and estimate <= cfg.max_delta_s:
            state.update(pending_at_switch=pending, estimated_final_s=round(estimate, 3))
            ctx.store.merge_json(ctx.move.id, ctx.token, "report", {"catch_up": state})
            ctx.event("catch_up", "converged", f"{pending} key(s) left (about {estimate:.2f}s to apply) after "
                      f"{state['rounds']} round(s): freezing for the final delta")
            return
        state = _round(ctx, state, head)
        ctx.heartbeat()
        if time.monotonic() - last_note > 30:
            ctx.event("catch_up", "lagging", f"round {state['rounds']}: {pending} key(s) pending, "
                      f"{state['last_keys']} applied in {state['last_round_s']}s; not freezing yet",
                      {"pending": pending})
            last_note = time.monotonic()
        if pending <= cfg.max_delta_keys:
            time.sleep(cfg.poll_s)


def final_delta(ctx) -> None:
    state = _state(ctx)
    src = ctx.source()
    head = cap.log_head(src, capture_id(ctx.move))
    if head > state["applied"]:
        state = _round(ctx, state, head)
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {"final_delta_keys": state.get("last_keys", 0)})


def stop(settings, move) -> None:
    """Remove the move's capture from its source cell (idempotent; best effort if the cell is down)."""
    if move.strategy != "online":
        return
    from migrator.db import connection

    with connection(settings.cell(move.source_cell).dsn, what=f"cell {move.source_cell!r} database",
                    autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('migrator.captures') IS NOT NULL").fetchone()[0]:
            cap.stop_capture(conn, capture_id(move))


def collect_abandoned(settings, store) -> list[str]:
    """Captures whose move is no longer active (a crash, a deleted move): removed with their logs."""
    from migrator.db import connection
    from migrator.moves import workflow as wf

    removed = []
    for cell in settings.cells:
        try:
            with connection(settings.cell(cell).dsn, what=f"cell {cell!r} database", autocommit=True) as conn:
                for c in cap.captures(conn):
                    try:
                        move = store.get(c["move_id"])
                        active = move.state in wf.ACTIVE_STATES
                    except MigratorError:
                        active = False
                    if not active:
                        cap.stop_capture(conn, c["capture_id"])
                        removed.append(f"{cell}:{c['capture_id']}")
        except MigratorError as exc:
            log.warning("capture collection skipped cell %s: %s", cell, exc)
    return removed
