"""The fan-out steps' units: how each step is split, what one unit does, and the fan-in.

copy_rows: one unit per key range of a table (large tables are split so several workers copy them).
copy_blobs: one unit per blob column of a blob-bearing table.
verify: the same key ranges as copy_rows (so a mismatch names table and range) plus one unit per
blob column.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from migrator.blobs.copier import blob_units, copy_blob_range, find_blob, verify_blob_range
from migrator.blobs.store import open_store, same_store
from migrator.copy.rows import copy_range, delete_range, plan_ranges
from migrator.errors import ChecksumMismatch
from migrator.observability import metrics
from migrator.verify.checksums import describe_range, range_checksum, range_checksums

log = logging.getLogger(__name__)
BLOB_PREFIX = "blobs:"


# ------------------------------------------------------------------ copy_rows
def plan_copy_rows(ctx) -> list[dict]:
    src = ctx.source()
    units = []
    for ordinal, table in enumerate(ctx.copy_order()):
        for r in plan_ranges(src, ctx.specs[table], ctx.org, ctx.settings.moves.chunk_rows):
            units.append({**r, "ordinal": ordinal})
    return units


def copy_rows_unit(ctx, unit) -> dict:
    spec = ctx.specs[unit.table_name]
    m = ctx.settings.moves

    def checkpoint(last_key, rows, nbytes):
        ctx.store.checkpoint_unit(ctx.move.id, "copy_rows", unit.unit, ctx.token, ctx.owner, position=last_key,
                                  done_delta=rows, bytes_delta=nbytes, ttl_s=m.lease_ttl_s)
        metrics.rows_copied.labels(unit.table_name).inc(rows)
        metrics.bytes_copied.inc(nbytes)

    copied = copy_range(ctx.source(), ctx.target(), spec, ctx.org, lo=unit.lo, hi=unit.hi, position=unit.position,
                        batch_rows=m.batch_rows, checkpoint=checkpoint,
                        disable_triggers=m.disable_target_triggers, token=ctx.token)
    return {"rows_this_attempt": copied}


def fan_in_copy_rows(ctx) -> None:
    units = ctx.store.units(ctx.move.id, "copy_rows")
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {
        "copy_rows": {"rows": sum(u.done for u in units), "bytes": sum(u.bytes_done for u in units),
                      "units": len(units)}})


# ------------------------------------------------------------------ copy_blobs
def plan_copy_blobs(ctx) -> list[dict]:
    units = []
    for ordinal, (table, blob) in enumerate(blob_units(ctx.dictionary)):
        units.append({"unit": f"{table}.{blob.key}", "table_name": table, "ordinal": ordinal, "lo": None,
                      "hi": None, "total": 0})
    return units


def _stores(ctx):
    return open_store(ctx.settings, ctx.move.source_cell), open_store(ctx.settings, ctx.move.target_cell)


def copy_blobs_unit(ctx, unit) -> dict:
    src_store, dst_store = _stores(ctx)
    if same_store(src_store, dst_store):
        return {"skipped": "source and target share one blob store"}
    table, key_column = unit.unit.split(".", 1)
    blob = find_blob(ctx.dictionary, table, key_column)
    m = ctx.settings.moves

    def checkpoint(last_key, count, nbytes):
        ctx.store.checkpoint_unit(ctx.move.id, "copy_blobs", unit.unit, ctx.token, ctx.owner, position=last_key,
                                  done_delta=count, bytes_delta=nbytes, ttl_s=m.lease_ttl_s)
        metrics.blobs_copied.labels("checked").inc(count)
        metrics.blob_bytes_copied.inc(nbytes)

    return copy_blob_range(ctx.source(), src_store, dst_store, ctx.specs[table], blob, ctx.org, position=unit.position,
                           batch=m.blob_batch, checkpoint=checkpoint, workers=m.blob_workers,
                           fresh=unit.attempts <= 1 and ctx.move.attempt <= 1, heartbeat_s=m.lease_ttl_s / 3)


def fan_in_copy_blobs(ctx) -> None:
    units = ctx.store.units(ctx.move.id, "copy_blobs")
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {
        "copy_blobs": {"blobs": sum(u.done for u in units), "bytes_written": sum(u.bytes_done for u in units)}})


# ------------------------------------------------------------------ verify
def plan_verify(ctx) -> list[dict]:
    units = [{"unit": u.unit, "table_name": u.table_name, "ordinal": u.ordinal, "lo": u.lo, "hi": u.hi,
              "total": u.total} for u in ctx.store.units(ctx.move.id, "copy_rows")]
    base = len(units)
    for i, (table, blob) in enumerate(blob_units(ctx.dictionary)):
        units.append({"unit": f"{BLOB_PREFIX}{table}.{blob.key}", "table_name": table, "ordinal": base + i,
                      "lo": None, "hi": None, "total": 0})
    return units


def verify_unit(ctx, unit) -> dict:
    if unit.unit.startswith(BLOB_PREFIX):
        return _verify_blobs(ctx, unit)
    spec = ctx.specs[unit.table_name]
    src, tgt = ctx.source(), ctx.target()
    source, target = range_checksums(src, tgt, spec, ctx.org, unit.lo, unit.hi)  # both sides at once
    recopied = False
    if source != target:
        where = describe_range(unit.table_name, unit.lo, unit.hi)
        metrics.verification_mismatches.labels(unit.table_name).inc()
        ctx.event("verify", "mismatch", f"{where}: source {source.rows} rows / {source.checksum}, "
                  f"target {target.rows} rows / {target.checksum}; copying the range again",
                  {"unit": unit.unit, "source": source.as_dict(), "target": target.as_dict()})
        m = ctx.settings.moves
        delete_range(tgt, spec, ctx.org, unit.lo, unit.hi, disable_triggers=m.disable_target_triggers,
                     token=ctx.token)
        copy_range(src, tgt, spec, ctx.org, lo=unit.lo, hi=unit.hi, position=None, batch_rows=m.batch_rows,
                   checkpoint=lambda *_: ctx.heartbeat(), disable_triggers=m.disable_target_triggers,
                   token=ctx.token)
        target = range_checksum(tgt, spec, ctx.org, unit.lo, unit.hi)
        recopied = True
        if source != target:
            raise ChecksumMismatch(
                f"{where}: checksums differ after a re-copy (source {source.rows} rows, {source.checksum}; "
                f"target {target.rows} rows, {target.checksum})",
                "see docs/runbooks/verification-failed.md; the source stays authoritative",
            )
    return {"source": source.as_dict(), "target": target.as_dict(), "recopied": recopied}


def _verify_blobs(ctx, unit) -> dict:
    src_store, dst_store = _stores(ctx)
    table, key_column = unit.unit[len(BLOB_PREFIX):].split(".", 1)
    blob = find_blob(ctx.dictionary, table, key_column)
    m = ctx.settings.moves
    count = verify_blob_range(ctx.source(), dst_store, ctx.specs[table], blob, ctx.org, batch=m.blob_batch,
                              workers=m.blob_workers, heartbeat=ctx.heartbeat)
    return {"blobs": count, "verified": True}


def fan_in_verify(ctx) -> None:
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
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {
        "verification": {"tables": tables, "blobs_verified": blobs, "recopied_ranges": recopied,
                         "ok": all(t["match"] for t in tables.values())}})


PLANNERS = {"copy_rows": plan_copy_rows, "copy_blobs": plan_copy_blobs, "verify": plan_verify}
WORK = {"copy_rows": copy_rows_unit, "copy_blobs": copy_blobs_unit, "verify": verify_unit}
FAN_IN = {"copy_rows": fan_in_copy_rows, "copy_blobs": fan_in_copy_blobs, "verify": fan_in_verify}
