"""cleanup: delete the source copy of a completed move, in batches, after the retention period.

Blobs first (their keys are read from the rows; an object another organization's rows in the source
cell reference stays, migrator/blobs/shared.py), then rows in reverse copy order, then the source's
freeze entry. Idempotent: a second run finds nothing left and marks the move cleaned.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, null

from migrator.blobs.copier import blob_units, delete_org_blobs
from migrator.blobs.store import open_store, same_store
from migrator.cells.guard import unfreeze_org
from migrator.copy.rows import delete_range
from migrator.moves import throttle
from migrator.moves import workflow as wf
from migrator.moves.context import MoveContext
from migrator.moves.operations import check_cleanup_allowed
from migrator.moves.steps.base import Step, pace
from migrator.moves.store import MoveStore

log = logging.getLogger(__name__)


def run_cleanup(settings, move_id: str, *, force: bool, actor: str, owner: str,
                accept_differences: str | None = None) -> dict:
    store = MoveStore(settings.control_dsn)
    move = store.get(move_id)
    if move.state == wf.CLEANED:
        return {"state": "cleaned", "already": True}
    check_cleanup_allowed(settings, move, force=force, now=store.now(), accept_differences=accept_differences)
    ctx = MoveContext(settings=settings, store=store, move=move, token=move.token, owner=owner)
    try:
        ctx.pacer = throttle.Pacer(settings, store, move, move.token, "cleanup", tables=ctx.copy_order())
        ctx.pacer.start()  # the source cell's health: a cleanup is never urgent
        src = ctx.source()
        src_store, dst_store = open_store(settings, move.source_cell), open_store(settings, move.target_cell)
        # What is deleted, batch by batch as it goes, in the report's ``cleanup`` (what `migrator cleanup`
        # shows); a retried cleanup adds to what an earlier execution deleted.
        earlier = (move.report or {}).get("cleanup") or {}
        deleted = {t: int(n) for t, n in (earlier.get("rows_deleted") or {}).items()}
        blobs = int(earlier.get("blobs_deleted") or 0)
        shared = 0  # counted afresh: a retried cleanup checks every remaining object again

        finished: list[str] = []

        def record() -> None:
            store.merge_json(move.id, move.token, "report", {"cleanup": {
                "rows_deleted": deleted, "blobs_deleted": blobs, "blobs_kept_shared": shared,
                "tables_done": len(finished)}})

        record()
        if not same_store(src_store, dst_store):
            refs = ctx.source()  # the reference check and its lock: a transaction of its own
            for table, blob in blob_units(ctx.dictionary):
                d, k = delete_org_blobs(src, src_store, ctx.specs[table], blob, ctx.org, cell=refs,
                                        dictionary=ctx.dictionary, specs=ctx.specs)
                blobs, shared = blobs + d, shared + k
                record()
        for table in reversed(ctx.copy_order()):

            def batch_done(n: int, table: str = table) -> None:
                deleted[table] = deleted.get(table, 0) + n
                record()
                pace(ctx, n)

            delete_range(src, ctx.specs[table], ctx.org, None, None,
                         disable_triggers=settings.moves.disable_target_triggers, token=move.token, on_batch=batch_done)
            deleted.setdefault(table, 0)
            finished.append(table)
            record()
            store.touch(move.id)
        unfreeze_org(src, ctx.org)
        store.set_fields(move.id, move.token, state=wf.CLEANED, cleaned_at=func.now(), throttle=null())
        detail = {"rows_deleted": deleted, "blobs_deleted": blobs, "blobs_kept_shared": shared}
        store.event(move.id, "cleanup", "cleaned", f"source copy in {move.source_cell!r} deleted", detail,
                    actor=actor)
        return {"state": "cleaned", **detail}
    finally:
        ctx.close()


STEP = Step("cleanup", operator=True, summary="after the retention period: the source copy deleted")
