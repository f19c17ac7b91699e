"""verify_changes (online strategy, inside the write window): every key changed since the verification
before the freeze, compared by key on both sides; every table's row count; the capture intact.

``verify`` compared every range before the freeze, leaving out the keys in flux since the catch-up's
last round (``moves.verified_snapshot``). The organization is now read-only, drained and its final
delta applied, so the change log since that snapshot names every key that can differ: they are
compared row by row (their count and checksum, found by key: a few probes each). The row counts of
both sides catch a row that appeared or vanished without a log entry, and the capture's triggers
must have fired all along (``change_log.check_capture_intact``). A key set that differs is applied
once more; if it still differs the move fails before the flip (the freeze is lifted, the source stays
authoritative). docs/adr/0012-the-write-window.md.
"""

from __future__ import annotations

from migrator.cells import capture as cap
from migrator.copy.delta import apply_round
from migrator.errors import ChecksumMismatch
from migrator.moves.change_log import capture_id, check_capture_intact
from migrator.moves.steps.base import Step
from migrator.observability import metrics
from migrator.verify.checksums import keys_checksums, org_counts


def _changed(ctx, since: str | None) -> dict[str, list]:
    src = ctx.source()
    return {t: cap.logged_keys(src, capture_id(ctx.move), t, prev=since) for t in ctx.copy_order()}


def _differing(ctx, changed: dict[str, list]) -> dict[str, dict]:
    out = {}
    for table, keys in changed.items():
        if keys:
            source, target = keys_checksums(ctx.source(), ctx.target(), ctx.specs[table], ctx.org, keys)
            if source != target:
                out[table] = {"keys": len(keys), "source": source.as_dict(), "target": target.as_dict()}
    return out


def run(ctx) -> None:
    move = ctx.store.get(ctx.move.id)
    check_capture_intact(ctx)
    changed = _changed(ctx, move.verified_snapshot)
    differing = _differing(ctx, changed)
    if differing:
        for table in differing:
            metrics.verification_mismatches.labels(table).inc()
        ctx.event("verify_changes", "mismatch", f"changed keys differ in {', '.join(differing)}; applying them again",
                  {"tables": differing})
        src = ctx.source()
        apply_round(src, ctx.target(), ctx.specs, ctx.copy_order(), ctx.org, capture_id(move),
                    move.verified_snapshot, cap.snapshot(src))
        ctx.heartbeat()
        still = _differing(ctx, changed)
        if still:
            shown = "; ".join(f"{t}: {d['keys']} changed key(s), source {d['source']['rows']} rows / "
                              f"{d['source']['checksum']}, target {d['target']['rows']} rows / "
                              f"{d['target']['checksum']}" for t, d in still.items())
            raise ChecksumMismatch(f"keys changed during the move differ after a second apply: {shown}",
                                   "see docs/runbooks/verification-failed.md; the source stays authoritative")
    counts = {}
    for table in ctx.copy_order():
        source, target = org_counts(ctx.source(), ctx.target(), ctx.specs[table], ctx.org)
        counts[table] = {"source_rows": source, "target_rows": target, "changed_keys": len(changed[table])}
        if source != target:
            metrics.verification_mismatches.labels(table).inc()
            raise ChecksumMismatch(
                f"{table}: the organization has {source} rows in {move.source_cell!r} but {target} in "
                f"{move.target_cell!r} although every changed key matches: a change was not captured",
                "see docs/runbooks/verification-failed.md (capture missed a change); resume re-verifies every row")
    ctx.store.merge_json(move.id, ctx.token, "report", {"verification_in_window": {
        "tables": counts, "changed_keys": sum(len(k) for k in changed.values()),
        "reapplied": sorted(differing), "ok": True}})


STEP = Step("verify_changes", run=run,
            summary="inside the window: keys changed since the verification, row counts, capture intact (online)")
