"""verify: per key range, row count and checksum on both sides; blobs by checksum.

The same key ranges as copy_rows (so a mismatch names table and range), plus one unit per blob
column. A range that differs is copied again once; if it still differs the move fails, naming the
range, and the source stays authoritative. ``fan_in`` rolls the ranges up per table into the
report (docs/adr/0010-verify-row-hash.md).

Online strategy: this runs before the freeze, while the organization is writable. The keys the change
log shows changed since the catch-up's last round (``moves.verified_snapshot``) are left out on both
sides, read in the same snapshot as the source's rows; ``verify_changes`` re-verifies every key changed
since that snapshot inside the write window (docs/adr/0012-the-write-window.md). Frozen strategy: inside
the window, every row.
"""

from __future__ import annotations

import time
from decimal import Decimal

from migrator.blobs.copier import blob_units, find_blob, verify_blob_range
from migrator.blobs.store import same_store
from migrator.cells import capture as cap
from migrator.copy.rows import copy_range, delete_range
from migrator.errors import ChecksumMismatch
from migrator.moves import calibration
from migrator.moves.change_log import capture_id, check_capture_intact
from migrator.moves.steps.base import ROWS, Step
from migrator.moves.steps.copy_blobs import stores
from migrator.observability import metrics
from migrator.verify.checksums import describe_range, range_checksum, range_checksums

BLOB_PREFIX = "blobs:"


def plan(ctx) -> list[dict]:
    if ctx.move.strategy == "online":
        # The catch-up's last position: keys logged after it are in flux until the window re-verifies them.
        snapshot = ctx.store.get(ctx.move.id).capture_snapshot
        ctx.store.set_fields(ctx.move.id, ctx.token, verified_snapshot=snapshot)
    units = [{"unit": u.unit, "table_name": u.table_name, "ordinal": u.ordinal, "lo": u.lo, "hi": u.hi,
              "total": u.total} for u in ctx.store.units(ctx.move.id, "copy_rows")]
    base = len(units)
    for i, (table, blob) in enumerate(blob_units(ctx.dictionary)):
        units.append({"unit": f"{BLOB_PREFIX}{table}.{blob.label}", "table_name": table, "ordinal": base + i,
                      "lo": None, "hi": None, "total": 0})
    return units


def _recopy(ctx, spec, unit) -> None:
    m = ctx.settings.moves
    tgt = ctx.target()
    delete_range(tgt, spec, ctx.org, unit.lo, unit.hi, disable_triggers=m.disable_target_triggers, token=ctx.token)
    copy_range(ctx.source(), tgt, spec, ctx.org, lo=unit.lo, hi=unit.hi, position=None, batch_rows=m.batch_rows,
               checkpoint=lambda *_: ctx.heartbeat(), disable_triggers=m.disable_target_triggers, token=ctx.token)


def _in_flux(ctx, table: str):
    """Online, before the freeze: the table's keys logged since the verified snapshot (read by the caller
    in the REPEATABLE READ transaction that also reads the source's rows). Else None: every row."""
    if ctx.move.strategy != "online":
        return None
    snapshot = ctx.store.get(ctx.move.id).verified_snapshot
    return lambda conn: cap.logged_keys(conn, capture_id(ctx.move), table, prev=snapshot)


def unit(ctx, unit) -> dict:
    # seconds: this unit's busy time, how migrator/moves/calibration.py shares the step's time among tables
    started = time.monotonic()
    result = _verify_blobs(ctx, unit) if unit.unit.startswith(BLOB_PREFIX) else _verify_rows(ctx, unit)
    return {**result, "seconds": round(time.monotonic() - started, 4)}


def _verify_rows(ctx, unit) -> dict:
    spec = ctx.specs[unit.table_name]
    in_flux = _in_flux(ctx, unit.table_name)
    source, target = range_checksums(ctx.source(), ctx.target(), spec, ctx.org, unit.lo, unit.hi, in_flux=in_flux)
    recopied = False
    if source != target:
        where = describe_range(unit.table_name, unit.lo, unit.hi)
        metrics.verification_mismatches.labels(unit.table_name).inc()
        ctx.event("verify", "mismatch", f"{where}: source {source.rows} rows / {source.checksum}, "
                  f"target {target.rows} rows / {target.checksum}; copying the range again",
                  {"unit": unit.unit, "source": source.as_dict(), "target": target.as_dict()})
        _recopy(ctx, spec, unit)
        if in_flux is None:
            target = range_checksum(ctx.target(), spec, ctx.org, unit.lo, unit.hi)
        else:  # writes go on: the keys in flux now are a superset of those left out before
            source, target = range_checksums(ctx.source(), ctx.target(), spec, ctx.org, unit.lo, unit.hi,
                                             in_flux=in_flux)
        recopied = True
        if source != target:
            raise ChecksumMismatch(
                f"{where}: checksums differ after a re-copy (source {source.rows} rows, {source.checksum}; "
                f"target {target.rows} rows, {target.checksum})",
                "see docs/runbooks/verification-failed.md; the source stays authoritative",
            )
    return {"source": source.as_dict(), "target": target.as_dict(), "recopied": recopied}


def _verify_blobs(ctx, unit) -> dict:
    src_store, dst_store = stores(ctx)
    table = unit.table_name
    blob = find_blob(ctx.dictionary, table, unit.unit.rsplit(".", 1)[1])
    m = ctx.settings.moves
    # Without a checksum column each object is compared with the source's (both hashed), unless the
    # two cells share one store.
    src = None if same_store(src_store, dst_store) else src_store
    count = verify_blob_range(ctx.source(), dst_store, ctx.specs[table], blob, ctx.org, batch=m.blob_batch,
                              workers=m.blob_workers, heartbeat=ctx.heartbeat, src=src)
    return {"blobs": count, "verified": True}


def fan_in(ctx) -> None:
    if ctx.move.strategy == "online":
        check_capture_intact(ctx)  # before paying for a write window that could not flip
    tables: dict[str, dict] = {}
    blobs = 0
    recopied = []
    for u in ctx.store.units(ctx.move.id, "verify"):
        res = u.result or {}
        if u.unit.startswith(BLOB_PREFIX):
            blobs += int(res.get("blobs", 0))
            continue
        t = tables.setdefault(u.table_name, {"source_rows": 0, "target_rows": 0, "source_checksum": Decimal(0),
                                             "target_checksum": Decimal(0), "ranges": 0})
        t["source_rows"] += res["source"]["rows"]
        t["target_rows"] += res["target"]["rows"]
        t["source_checksum"] += Decimal(res["source"]["checksum"])
        t["target_checksum"] += Decimal(res["target"]["checksum"])
        t["ranges"] += 1
        if res.get("recopied"):
            recopied.append(u.unit)
    for t in tables.values():
        t["source_checksum"] = str(t["source_checksum"])
        t["target_checksum"] = str(t["target_checksum"])
        t["match"] = t["source_rows"] == t["target_rows"] and t["source_checksum"] == t["target_checksum"]
    seconds = calibration.step_seconds(ctx.store, ctx.move)
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {
        "verification": {"tables": tables, "blobs_verified": blobs, "recopied_ranges": recopied,
                         "ok": all(t["match"] for t in tables.values()), "seconds": seconds}})
    calibration.record(ctx, seconds)  # what this move measured, for the next moves' estimates


STEP = Step("verify", plan=plan, unit=unit, fan_in=fan_in, unit_queue=ROWS,
            summary="row counts and checksums per key range on both sides; blobs by checksum")
