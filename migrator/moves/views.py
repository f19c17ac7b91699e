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


# What each step of a move costs, in row-equivalents of work: one row copied is 1. Progress is the work done
# over the work planned, and the ETA the work left over the rate the copy measured. The ratios are from
# benchmarks/results/move-*.json (500k and 2M rows): preflight counts rows at about 1/4 of the copy's time,
# a verification (before and after the flip) checks rows at about 0.7 of it; a blob costs about 100 rows
# plus its bytes at about 1,000 bytes a row (moves.est_blob_bytes_per_s / est_rows_per_s). The quick steps
# (capture, freeze, drain, the final delta and its verification, flip, unfreeze) take a fixed time each,
# whatever the organization's size: QUICK_WORK. catch_up is quick when the organization writes little;
# its keys are not known in advance.
ROW_WORK = {"preflight": 0.25, "copy_rows": 1.0, "verify": 0.7, "verify_after_flip": 0.7}
BLOB_WORK = 100.0
BLOB_BYTES_PER_ROW = 1_000.0
QUICK_WORK = 1_000.0


def step_work(step: str, plan: dict) -> float:
    """The expected cost of ``step`` for a move with this plan (preflight's), in row-equivalents."""
    rows = int(plan.get("rows_total") or 0)
    if step in ROW_WORK:
        return rows * ROW_WORK[step] + QUICK_WORK
    if step == "copy_blobs":
        return int(plan.get("blobs") or 0) * BLOB_WORK + int(plan.get("blob_bytes") or 0) / BLOB_BYTES_PER_ROW \
            + QUICK_WORK
    return QUICK_WORK


def weighted_fraction(steps, plan: dict, step: str, within: float = 0.0, *, done: bool = False) -> tuple[float, float]:
    """(fraction of the move's work done, work left) with ``step`` of ``steps`` ``within`` (0..1) done."""
    if done:
        return 1.0, 0.0
    work = [step_work(s, plan) for s in steps]
    total = sum(work)
    idx = steps.index(step) if step in steps else 0
    finished = sum(work[:idx]) + work[idx] * min(max(within, 0.0), 1.0)
    return finished / total, total - finished


def _seconds_between(start, end) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def _removal(move, plan: dict) -> dict | None:
    """What an abort took off the target, or a cleanup off the source, so far (the report's ``abort`` /
    ``cleanup``, written table by table as they go); None while neither ran."""
    report = move.report or {}
    kind = "abort" if move.state in (wf.ABORTING, wf.ABORTED) else "cleanup" if "cleanup" in report else None
    if kind is None:
        return None
    got = report.get(kind) or {}
    tables = {t: int(n) for t, n in (got.get("rows_deleted") or {}).items()}
    cell = move.target_cell if kind == "abort" else move.source_cell
    done = move.state == (wf.ABORTED if kind == "abort" else wf.CLEANED)
    return {"what": kind, "cell": cell, "tables": tables, "rows": sum(tables.values()),
            "tables_done": int(got.get("tables_done", len(tables))), "tables_total": len(plan.get("tables") or {}),
            "done": done}


def progress(store: MoveStore, move) -> dict:
    """Per-table rows copied of total, blobs copied of total, the fraction of the move's work done (each step
    weighed by its cost, see ``step_work``), the copy's rows per second and the seconds left (None when
    not known yet). Once an abort or a cleanup started: what it removed so far (``removal``); an aborted
    move's tables are no longer copied, and its fraction is the abort's."""
    plan = move.plan or {}
    tables: dict[str, dict] = {t: {"copied": 0, "total": n} for t, n in (plan.get("tables") or {}).items()}
    blobs_done = 0
    verified = 0
    verify_units = 0
    after_done = after_units = 0
    for u in store.units(move.id):
        if u.step == "copy_rows":
            t = tables.setdefault(u.table_name, {"copied": 0, "total": 0})
            t["copied"] += u.done
        elif u.step == "copy_blobs":
            blobs_done += u.done
        elif u.step == "verify":
            verify_units += 1
            verified += u.state == "done"
        elif u.step == "verify_after_flip":
            after_units += 1
            after_done += u.state == "done"
    rows_total = sum(t["total"] for t in tables.values())
    rows_done = sum(min(t["copied"], t["total"]) if t["total"] else t["copied"] for t in tables.values())
    blobs_total = int(plan.get("blobs") or 0)
    within = 0.0
    if move.step == "copy_rows" and rows_total:
        within = rows_done / rows_total
    elif move.step == "copy_blobs" and blobs_total:
        within = blobs_done / blobs_total
    elif move.step == "verify" and verify_units:
        within = verified / verify_units
    elif move.step == "verify_after_flip" and after_units:
        within = after_done / after_units
    fraction, work_left = weighted_fraction(wf.steps_for(move.strategy), plan, move.step, within,
                                            done=move.state in (wf.COMPLETED, wf.CLEANED))
    # The copy's rate: live while it runs (since the step started), else what its fan-in recorded.
    rows_per_s = None
    if move.step == "copy_rows" and move.state == wf.RUNNING and rows_done:
        elapsed = _seconds_between(move.step_started_at, store.now())
        rows_per_s = rows_done / elapsed if elapsed else None
    else:
        copied = (move.report or {}).get("copy_rows") or {}
        if copied.get("seconds"):
            rows_per_s = copied["rows"] / copied["seconds"]
    eta_s = None
    if move.state in (wf.COMPLETED, wf.CLEANED):
        eta_s = 0.0
    elif rows_per_s and move.state in (wf.QUEUED, wf.RUNNING):
        eta_s = work_left / rows_per_s
    removal = _removal(move, plan)
    if removal is not None and removal["what"] == "abort":
        fraction = 1.0 if removal["done"] else (removal["tables_done"] / removal["tables_total"]
                                                if removal["tables_total"] else 0.0)
        eta_s = None
    return {
        "fraction": round(fraction, 4),
        "tables": tables,
        "rows_copied": rows_done,
        "rows_total": rows_total,
        "blobs_copied": blobs_done,
        "blobs_total": blobs_total,
        "verify_units_done": verified,
        "verify_units": verify_units,
        "rows_per_s": None if rows_per_s is None else round(rows_per_s, 1),
        "eta_s": None if eta_s is None else round(eta_s, 1),
        "removal": removal,
    }


def throttle(move, now: dt.datetime | None = None) -> dict | None:
    """The health reading holding the move's units back while it lasts (docs/adr/0019-health-indicators.md):
    ``{"text": "paused: replication lag 12 s on cell-1 (limit 5 s)", "since_s": 40.2, ...}``, else None."""
    t = move.throttle
    if not t or move.state != wf.RUNNING:
        return None
    now = now or dt.datetime.now(dt.UTC)
    since = t.get("since")
    try:
        since_s = round((now - dt.datetime.fromisoformat(since)).total_seconds(), 1) if since else None
    except ValueError:
        since_s = None
    what = "paused" if t.get("signal") == "stop" else "slowed down"
    return {**t, "text": f"{what}: {t.get('reason', '?')}", "since_s": since_s}


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
        "throttled": throttle(move, now),
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
        verified_after_flip=move.verified_after_flip,
        source_frozen_clock=_iso(move.source_frozen_clock),
        capture_snapshot=move.capture_snapshot,
        history=[
            {"at": _iso(e.at), "step": e.step, "event": e.event, "actor": e.actor, "message": e.message,
             "detail": e.detail}
            for e in store.events(move.id)
        ],
    )
    return data
