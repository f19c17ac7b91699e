"""abort: stop a move before its flip and put everything back as it was.

Runs as a Celery task after the operator's request rotated the move's token (so every worker of
the old attempt is fenced out). It waits for the old attempt's leases to lapse, removes the
organization's partial rows and blobs from the target, lifts the freeze in both cells and in the
Topology Service, and marks the move aborted. Running it twice is harmless.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import func

from migrator.blobs.copier import blob_units, delete_org_blobs
from migrator.blobs.store import open_store, same_store
from migrator.copy.keys import delete_source_keys
from migrator.moves import online
from migrator.moves import workflow as wf
from migrator.moves.context import MoveContext
from migrator.moves.store import MoveStore

log = logging.getLogger(__name__)


def run_abort(settings, move_id: str, token: str, owner: str) -> str:
    from migrator.cells.guard import unfreeze_org

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
        route = ctx.topology.classify(ctx.org)
        tokens = {token, *((move.report or {}).get("tokens") or [])}
        if route.cell == move.target_cell:
            # A worker of the old attempt flipped just before the abort took over: finish instead.
            held = route.holder(tokens)
            if held is not None and held != token:
                ctx.topology.refence(ctx.org, held, token, actor="abort", reason="flip already done")
            store.set_fields(move.id, token, state=wf.RUNNING, step="unfreeze", flipped_at=func.now())
            store.event(move.id, "flip", "abort_refused", "the route had already flipped; completing the move")
            return "flipped"
        deleted = {}
        if move.plan:
            # Preflight passed, so the target held none of these keys before this move: every target
            # row with one of the source's keys is ours. (Matching by source keys, not by the target's
            # sharding-key chains, also finds children whose parents never arrived.)
            tgt, src = ctx.target(), ctx.source()
            src_store, dst_store = open_store(settings, move.source_cell), open_store(settings, move.target_cell)
            if not same_store(src_store, dst_store):
                for table, blob in blob_units(ctx.dictionary):
                    delete_org_blobs(src, dst_store, ctx.specs[table], blob, ctx.org)
            for table in reversed(ctx.copy_order()):
                deleted[table] = delete_source_keys(src, tgt, ctx.specs[table], ctx.org)
                store.touch(move.id)
        online.stop(settings, move)
        for cell in (move.source_cell, move.target_cell):
            unfreeze_org(ctx.cell_conn(cell), ctx.org)
        route = ctx.topology.classify(ctx.org)
        held = route.holder(tokens)
        if held is not None:
            if held != token:
                ctx.topology.refence(ctx.org, held, token, actor="abort", reason="abort")
            ctx.topology.unfreeze(ctx.org, token, actor=f"move {move.id}", reason="move aborted")
        store.reset_units(move.id, ["copy_rows", "copy_blobs", "verify"])
        store.set_fields(move.id, token, state=wf.ABORTED, lease_owner=None, lease_until=None)
        store.event(move.id, move.step, "aborted", "target cleaned, source writable",
                    {"target_rows_deleted": deleted})
        return "aborted"
    finally:
        ctx.close()
