"""The online strategy's change log, as a move uses it (docs/adr/0009-online-moves.md).

``capture`` starts logging the organization's changes in the source; ``catch_up`` and
``final_delta`` apply the log to the target in rounds (:func:`apply_round`: the changed rows, then
the blobs those rows reference). A round's position is a source snapshot: every entry whose
transaction is visible in it has been applied (log ids are assigned at insert, not at commit, so an
id says nothing about what has committed). It is control state, kept in the move's
``capture_snapshot`` column; each round's figures go to the human report. The capture is removed
at unfreeze and on abort (:func:`stop`); the reconciler removes captures of moves that ended
(:func:`collect_abandoned`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from psycopg import sql

from migrator.blobs.copier import blob_units, copy_blob, make_ref
from migrator.blobs.shared import copying_into
from migrator.blobs.store import open_store, same_store
from migrator.cells import capture as cap
from migrator.cells.guard import TRIGGER_NAME as GUARD_TRIGGER
from migrator.copy.delta import apply_round as apply_rows
from migrator.copy.delta import logged_keys_sql
from migrator.db import connection
from migrator.errors import CaptureIncomplete, MigratorError
from migrator.moves import workflow as wf

log = logging.getLogger(__name__)


def capture_id(move) -> str:
    return str(move.id)


def after_flip_capture_id(move) -> str:
    """The capture of the organization's writes on the target after the flip (verify_after_flip)."""
    return f"{move.id}:after-flip"


@dataclass
class Round:
    snapshot: str  # the source snapshot now applied
    keys: int
    blobs: int
    seconds: float

    @property
    def keys_per_s(self) -> float | None:
        return round(self.keys / self.seconds, 1) if self.seconds else None


def _copy_changed_blobs(ctx, src, tgt, prev: str | None, cur: str) -> int:
    """Blobs referenced by rows that changed in this round (copy_blob skips identical ones)."""
    src_store = open_store(ctx.settings, ctx.move.source_cell)
    dst_store = open_store(ctx.settings, ctx.move.target_cell)
    if same_store(src_store, dst_store):
        return 0
    copied = 0
    for table, blob in blob_units(ctx.dictionary):
        spec = ctx.specs[table]
        keys = logged_keys_sql(spec)
        params = {"tbl": table, "cap": capture_id(ctx.move), "prev": prev, "cur": cur, "org": ctx.org}
        q = sql.SQL("SELECT {pk}, {key}, {sha}, {size} FROM {t} AS t WHERE ({pred}) AND ({pk}) IN ({keys})"
                    " AND {key} IS NOT NULL").format(
            pk=spec.pk_cols("t"), key=blob.key_expr("t"),
            sha=sql.Identifier("t", blob.checksum) if blob.checksum else sql.SQL("NULL::text"),
            size=sql.Identifier("t", blob.size) if blob.size else sql.SQL("NULL::bigint"), t=spec.ident,
            pred=spec.predicate, keys=keys)
        n = len(spec.pk)
        with copying_into(tgt):  # no cleanup in the target deletes an object this finds present
            for row in src.execute(q, params):
                ref = make_ref(table, list(row[:n]), row[n], row[n + 1], row[n + 2], blob)
                copied += bool(copy_blob(src_store, dst_store, ref))
    return copied


def apply_round(ctx) -> Round:
    """Apply every entry logged since the move's ``capture_snapshot`` that has committed now; record the
    new position (control state) and the round's figures (report)."""
    prev = ctx.store.get(ctx.move.id).capture_snapshot
    src, tgt = ctx.source(), ctx.target()
    cur = cap.snapshot(src)
    started = time.monotonic()
    result = apply_rows(src, tgt, ctx.specs, ctx.copy_order(), ctx.org, capture_id(ctx.move), prev, cur)
    blobs = _copy_changed_blobs(ctx, src, tgt, prev, cur)
    done = Round(snapshot=cur, keys=result.total_keys, blobs=blobs, seconds=time.monotonic() - started)
    ctx.store.record_catch_up_round(ctx.move.id, ctx.token, snapshot=cur, keys=done.keys, blobs=done.blobs,
                                    seconds=done.seconds, keys_per_s=done.keys_per_s)
    return done


def pending(ctx) -> int:
    """Distinct keys logged since the move's last applied position."""
    return cap.pending_keys(ctx.source(), capture_id(ctx.move), ctx.store.get(ctx.move.id).capture_snapshot)


def check_capture_intact(ctx) -> None:
    """Refuse to go on when the source's capture (or its freeze guard) may have missed changes: a trigger
    missing or not firing now, or switched off at any moment since the capture started."""

    src = ctx.source()
    mine = [c for c in cap.captures(src) if c["capture_id"] == capture_id(ctx.move)]
    if not mine:
        raise CaptureIncomplete(f"cell {ctx.move.source_cell!r}: the change capture of move {ctx.move.id} is gone",
                                "resume the move: it captures again and copies what changed (docs/runbooks/"
                                "verification-failed.md)")
    tables = ctx.copy_order()
    triggers = (cap.TRIGGER, GUARD_TRIGGER) if ctx.store.get(ctx.move.id).frozen_at else (cap.TRIGGER,)
    gaps = cap.capture_gaps(src, tables, mine[0]["started_at"], triggers=triggers)
    if gaps:
        raise CaptureIncomplete(
            f"cell {ctx.move.source_cell!r}: the change capture may have missed changes of organization {ctx.org}: "
            + "; ".join(gaps[:5]) + (f" (and {len(gaps) - 5} more)" if len(gaps) > 5 else ""),
            "re-enable the triggers (`migrator cells init` reinstalls them), then resume the move: it re-verifies "
            "every row before it can flip; see docs/runbooks/verification-failed.md")


def stop(settings, move) -> None:
    """Remove the move's capture from its source cell (idempotent)."""
    if move.strategy != "online":
        return
    with connection(settings.cell(move.source_cell).dsn, what=f"cell {move.source_cell!r} database",
                    autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('migrator.captures') IS NOT NULL").fetchone()[0]:
            cap.stop_capture(conn, capture_id(move))


def collect_abandoned(settings, store) -> list[str]:
    """Captures whose move is no longer active (a crash, a deleted move): removed with their logs."""
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
