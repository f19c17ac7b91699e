"""verify_after_flip: the retained source copy against the target, in full, after the flip.

The target has taken the organization's writes since the flip, and logged them (the flip step starts a
change capture on the target before it lifts the target's freeze); the source copy is frozen until
cleanup. Every key range is compared on both sides, leaving out the keys the target changed, read in
the same snapshot as the target's rows. Nothing is copied: the target is authoritative now. A
difference is recorded (``moves.verified_after_flip = false``, the report, an event, the verification
failures metric that ``MoveVerificationFailed`` alerts on) and ``cleanup`` refuses to delete the source
copy until an operator has looked (docs/runbooks/verification-failed.md). The target's capture ends
here. ``moves.verify_after_flip: false`` skips it. docs/adr/0012-the-write-window.md.
"""

from __future__ import annotations

from migrator.cells import capture as cap
from migrator.moves.change_log import after_flip_capture_id
from migrator.moves.steps.base import ROWS, Step
from migrator.observability import metrics
from migrator.verify.checksums import describe_range, range_checksums


def _capture_running(ctx) -> bool:
    return any(c["capture_id"] == after_flip_capture_id(ctx.move) for c in cap.captures(ctx.target()))


def plan(ctx) -> list[dict]:
    if not ctx.settings.moves.verify_after_flip or not _capture_running(ctx):
        return []
    return [{"unit": u.unit, "table_name": u.table_name, "ordinal": u.ordinal, "lo": u.lo, "hi": u.hi,
             "total": u.total} for u in ctx.store.units(ctx.move.id, "copy_rows")]


def unit(ctx, unit) -> dict:
    spec = ctx.specs[unit.table_name]
    capture = after_flip_capture_id(ctx.move)
    source, target = range_checksums(ctx.source(), ctx.target(), spec, ctx.org, unit.lo, unit.hi,
                                     in_flux=lambda conn: cap.logged_keys(conn, capture, unit.table_name),
                                     flux_side="target")
    return {"source": source.as_dict(), "target": target.as_dict(), "match": source == target}


def fan_in(ctx) -> None:
    move = ctx.move
    units = ctx.store.units(move.id, "verify_after_flip")
    if not units:
        why = "off (moves.verify_after_flip: false)" if not ctx.settings.moves.verify_after_flip \
            else "no change capture on the target since the flip"
        ctx.store.merge_json(move.id, ctx.token, "report", {"verification_after_flip": {"skipped": why}})
        return
    differing = [u for u in units if not (u.result or {}).get("match")]
    ok = not differing
    ranges = [describe_range(u.table_name, u.lo, u.hi) for u in differing]
    ctx.store.set_fields(move.id, ctx.token, verified_after_flip=ok)
    ctx.store.merge_json(move.id, ctx.token, "report", {"verification_after_flip": {
        "ok": ok, "ranges": len(units), "differing": ranges}})
    if not ok:
        metrics.verification_failures.inc()
        ctx.event("verify_after_flip", "mismatch",
                  f"the source copy differs from the target in {len(ranges)} range(s): {'; '.join(ranges[:5])}; "
                  "cleanup refuses until this is resolved (docs/runbooks/verification-failed.md)",
                  {"ranges": ranges})
    cap.stop_capture(ctx.target(), after_flip_capture_id(move))


STEP = Step("verify_after_flip", plan=plan, unit=unit, fan_in=fan_in, unit_queue=ROWS,
            summary="after the flip: the retained source copy against the target, in full")
