"""Moves as plain data (for `migrator status --json`, the watch display and the HTTP API)."""

from __future__ import annotations

import datetime as dt

from migrator.moves import window
from migrator.moves import workflow as wf
from migrator.moves.store import MoveStore


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _iso(value):
    return value.isoformat() if isinstance(value, dt.datetime) else value


def progress(store: MoveStore, move) -> dict:
    """Per-table rows copied of total, blobs copied of total, and the fraction of steps done."""
    plan = move.plan or {}
    tables: dict[str, dict] = {t: {"copied": 0, "total": n} for t, n in (plan.get("tables") or {}).items()}
    blobs_done = 0
    verified = 0
    verify_units = 0
    for u in store.units(move.id):
        if u.step == "copy_rows":
            t = tables.setdefault(u.table_name, {"copied": 0, "total": 0})
            t["copied"] += u.done
        elif u.step == "copy_blobs":
            blobs_done += u.done
        elif u.step == "verify":
            verify_units += 1
            verified += u.state == "done"
    rows_total = sum(t["total"] for t in tables.values())
    rows_done = sum(min(t["copied"], t["total"]) if t["total"] else t["copied"] for t in tables.values())
    if move.state in (wf.COMPLETED, wf.CLEANED):
        fraction = 1.0
    else:
        steps = wf.steps_for(move.strategy)
        idx = steps.index(move.step) if move.step in steps else 0
        within = 0.0
        if move.step == "copy_rows" and rows_total:
            within = rows_done / rows_total
        elif move.step == "verify" and verify_units:
            within = verified / verify_units
        fraction = (idx + within) / len(steps)
    return {
        "fraction": round(fraction, 4),
        "tables": tables,
        "rows_copied": rows_done,
        "rows_total": rows_total,
        "blobs_copied": blobs_done,
        "blobs_total": int(plan.get("blobs") or 0),
        "verify_units_done": verified,
        "verify_units": verify_units,
    }


def move_summary(store: MoveStore, move, now: dt.datetime | None = None) -> dict:
    now = now or dt.datetime.now(dt.UTC)
    return {
        "id": str(move.id),
        "organization_id": move.organization_id,
        "source": move.source_cell,
        "target": move.target_cell,
        "strategy": move.strategy,
        "state": move.state,
        "step": move.step,
        "attempt": move.attempt,
        "error": move.error,
        "error_code": move.error_code,
        "requested_by": move.requested_by,
        "reason": move.reason,
        "created_at": _iso(move.created_at),
        "age_s": round((now - move.created_at).total_seconds(), 1) if move.created_at else None,
    }


def move_detail(store: MoveStore, move) -> dict:
    data = move_summary(store, move)
    data.update(
        plan=move.plan or {},
        report=move.report or {},
        progress=progress(store, move),
        frozen_at=_iso(move.frozen_at),
        flipped_at=_iso(move.flipped_at),
        unfrozen_at=_iso(move.unfrozen_at),
        completed_at=_iso(move.completed_at),
        cleaned_at=_iso(move.cleaned_at),
        heartbeat_at=_iso(move.heartbeat_at),
        route_version=move.route_version,
        write_window_s=_round(window.seconds(move, dt.datetime.now(dt.UTC))),
        write_window_open=move.frozen_at is not None and window.closed_at(move) is None,
        freeze_lifted=move.freeze_lifted,
        source_frozen_clock=_iso(move.source_frozen_clock),
        capture_snapshot=move.capture_snapshot,
        history=[
            {"at": _iso(e.at), "step": e.step, "event": e.event, "actor": e.actor, "message": e.message,
             "detail": e.detail}
            for e in store.events(move.id)
        ],
    )
    return data
