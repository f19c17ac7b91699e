"""copy_blobs: every object the organization's rows reference, one unit per blob column.

Each object is checksummed on arrival; an identical object already in the target is skipped.
Nothing to do when both cells share one blob store.
"""

from __future__ import annotations

import time

from migrator.blobs.copier import blob_units, copy_blob_range, find_blob
from migrator.blobs.store import open_store, same_store
from migrator.moves.calibration import step_seconds
from migrator.moves.steps.base import BLOBS, Step, pace
from migrator.observability import metrics


def stores(ctx):
    """(source store, target store) of the move's cells."""
    return open_store(ctx.settings, ctx.move.source_cell), open_store(ctx.settings, ctx.move.target_cell)


def plan(ctx) -> list[dict]:
    return [{"unit": f"{table}.{blob.label}", "table_name": table, "ordinal": ordinal, "lo": None, "hi": None,
             "total": 0} for ordinal, (table, blob) in enumerate(blob_units(ctx.dictionary))]


def unit(ctx, unit) -> dict:
    src_store, dst_store = stores(ctx)
    if same_store(src_store, dst_store):
        return {"skipped": "source and target share one blob store"}
    table = unit.table_name
    blob = find_blob(ctx.dictionary, table, unit.unit.rsplit(".", 1)[1])
    m = ctx.settings.moves

    def checkpoint(last_key, count, nbytes):
        ctx.store.checkpoint_unit(ctx.move.id, "copy_blobs", unit.unit, ctx.token, ctx.owner, position=last_key,
                                  done_delta=count, bytes_delta=nbytes, ttl_s=ctx.ttl_s)
        metrics.blobs_copied.labels("checked").inc(count)
        metrics.blob_bytes_copied.inc(nbytes)
        pace(ctx, count)

    started = time.monotonic()
    result = copy_blob_range(ctx.source(), src_store, dst_store, ctx.specs[table], blob, ctx.org,
                             position=unit.position, batch=m.blob_batch, checkpoint=checkpoint,
                             workers=m.blob_workers, fresh=unit.attempts <= 1 and ctx.move.attempt <= 1,
                             heartbeat_s=ctx.ttl_s / 3, target=ctx.target())
    # seconds: this unit's busy time, how migrator/moves/calibration.py shares the step's time among tables
    return {**(result or {}), "seconds": round(time.monotonic() - started, 4)}


def fan_in(ctx) -> None:
    units = ctx.store.units(ctx.move.id, "copy_blobs")
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {
        "copy_blobs": {"blobs": sum(u.done for u in units), "bytes_written": sum(u.bytes_done for u in units),
                       "seconds": step_seconds(ctx.store, ctx.move)}})


STEP = Step("copy_blobs", plan=plan, unit=unit, fan_in=fan_in, unit_queue=BLOBS,
            summary="every object the rows reference, checksummed on arrival")
