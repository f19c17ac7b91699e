"""abort: stop a move before its flip and put everything back as it was.

Runs as a Celery task after the operator's request rotated the move's token (so every worker of
the old attempt is fenced out). It waits for the old attempt's leases to lapse, removes the
organization's partial rows and blobs from the target, lifts the freeze in both cells and in the
Topology Service (migrator/moves/recovery.py), and marks the move aborted. Running it twice is
harmless. If a worker of the old attempt flipped just before the abort took over, the move is
completed instead (after the flip the way back is a move in the other direction).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import func

from migrator.blobs.copier import blob_units, delete_org_blobs
from migrator.blobs.store import open_store, same_store
from migrator.copy.keys import delete_source_keys
from migrator.moves import change_log, recovery
from migrator.moves import workflow as wf
from migrator.moves.context import MoveContext
from migrator.moves.steps.base import Step
from migrator.moves.store import MoveStore

log = logging.getLogger(__name__)

ABORTED, FLIPPED = "aborted", "flipped"


def _remove_partial_copy(ctx) -> dict[str, int]:
    """Every target row (and blob no other organization's target row references) with one of the
    organization's source keys.

    Preflight passed, so the target held none of these keys before this move: every such row is
    ours. Matching by source keys, not by the target's sharding-key chains, also finds children
    whose parents never arrived.
    """
    settings, move = ctx.settings, ctx.move
    tgt, src = ctx.target(), ctx.source()
    src_store, dst_store = open_store(settings, move.source_cell), open_store(settings, move.target_cell)
    # What is removed, table by table as it goes, in the report's ``abort`` (what `migrator abort`, `watch`
    # and `status` show); a retried abort adds to what an earlier execution removed.
    earlier = (move.report or {}).get("abort") or {}
    deleted = {t: int(n) for t, n in (earlier.get("rows_deleted") or {}).items()}
    blobs = int(earlier.get("blobs_deleted") or 0)
    shared = int(earlier.get("blobs_kept_shared") or 0)

    def record() -> None:
        ctx.store.merge_json(move.id, ctx.token, "report", {"abort": {
            "rows_deleted": deleted, "blobs_deleted": blobs, "blobs_kept_shared": shared}})

    record()
    if not same_store(src_store, dst_store):
        # Keys from the source's rows (the target's may be partial); an object that another
        # organization's rows in the target reference stays (it was there before, or is shared).
        for table, blob in blob_units(ctx.dictionary):
            d, k = delete_org_blobs(src, dst_store, ctx.specs[table], blob, ctx.org, cell=tgt,
                                    dictionary=ctx.dictionary, specs=ctx.specs)
            blobs, shared = blobs + d, shared + k
            record()
    for table in reversed(ctx.copy_order()):
        deleted[table] = deleted.get(table, 0) + delete_source_keys(src, tgt, ctx.specs[table], ctx.org)
        record()
        ctx.store.touch(move.id)
    return deleted


def run_abort(settings, move_id: str, token: str, owner: str) -> str:
    """The abort task's work. Returns ``aborted``, ``flipped`` (the move completes instead) or why
    there was nothing to do."""
    store = MoveStore(settings.control_dsn)
    move = store.get(move_id)
    if move.state != wf.ABORTING or move.token != token:
        return f"move is {move.state}; nothing to do"
    ctx = MoveContext(settings=settings, store=store, move=move, token=token, owner=owner)
    try:
        # Let workers of the fenced attempt finish or lose their leases (each checks the token per batch).
        deadline = time.monotonic() + settings.moves.lease_ttl_s + 5
        while store.live_unit_leases(move.id) and time.monotonic() < deadline:
            store.touch(move.id)
            time.sleep(0.5)
        if ctx.topology.classify(ctx.org).cell == move.target_cell:
            recovery.take_over_freeze(ctx.topology, move, token, actor="abort", reason="flip already done")
            store.set_fields(move.id, token, state=wf.RUNNING, step="unfreeze", flipped_at=func.now())
            store.event(move.id, "flip", "abort_refused", "the route had already flipped; completing the move")
            return FLIPPED
        deleted = _remove_partial_copy(ctx) if move.plan else {}
        change_log.stop(settings, move)
        recovery.lift_freeze(settings, move, token, cells=(move.source_cell, move.target_cell),
                             reason="move aborted", leave_foreign=True, topology=ctx.topology,
                             cell_conn=ctx.cell_conn)
        store.reset_units(move.id, ["copy_rows", "copy_blobs", "verify"])
        closed = {"unfrozen_at": func.now()} if move.frozen_at and move.unfrozen_at is None else {}
        store.set_fields(move.id, token, state=wf.ABORTED, lease_owner=None, lease_until=None, **closed)
        store.event(move.id, move.step, "aborted", "target cleaned, source writable",
                    {"target_rows_deleted": deleted})
        return ABORTED
    finally:
        ctx.close()


STEP = Step("abort", operator=True, summary="before the flip: target cleaned, source writable, move aborted")
