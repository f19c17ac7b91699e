"""Runs one step (or one unit of a fan-out step) of a move, fenced and idempotent.

The Celery tasks in ``tasks/`` call ``run_step`` / ``run_unit`` and enqueue what the returned
:class:`Outcome` says, after the state change has committed. A step's work lives in the module
named in ``workflow.STEP_MODULES``; this file only sequences it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded

from migrator.config import Settings
from migrator.db import first_line, is_transient
from migrator.errors import InvalidMoveState, MigratorError, StaleToken
from migrator.moves import online
from migrator.moves import units as unit_work
from migrator.moves import workflow as wf
from migrator.moves.context import MoveContext
from migrator.moves.cutover import flip, unfreeze
from migrator.moves.freeze import drain, freeze
from migrator.moves.store import MoveStore
from migrator.observability import metrics
from migrator.observability.logs import log_context

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    next_step: str | None = None  # enqueue this step's task
    step: str | None = None
    units: list[str] = field(default_factory=list)  # enqueue these unit tasks of ``step``
    completed: bool = False
    skipped: str | None = None


def _preflight(ctx: MoveContext) -> None:
    from migrator.moves.preflight import run_preflight

    move = ctx.move
    plan = run_preflight(ctx.settings, ctx.topology, ctx.dictionary, ctx.org, move.source_cell, move.target_cell,
                         connect_cell=ctx.cell_conn, heartbeat=ctx.heartbeat)
    ctx.store.set_fields(move.id, ctx.token, plan=plan, route_version=plan["route_version"])


STEP_WORK = {
    "preflight": _preflight,
    "capture": online.capture,
    "catch_up": online.catch_up,
    "freeze": freeze,
    "drain": drain,
    "final_delta": online.final_delta,
    "flip": flip,
    "unfreeze": unfreeze,
}


def _context(settings: Settings, store: MoveStore, move, token: str, owner: str) -> MoveContext:
    return MoveContext(settings=settings, store=store, move=move, token=token, owner=owner)


def _advance(ctx: MoveContext, step: str) -> Outcome:
    moved = ctx.store.advance(ctx.move.id, ctx.token, step)
    if moved is None:
        return Outcome(skipped=f"step {step} already advanced")
    ctx.event(step, "finished")
    if moved.state == wf.COMPLETED:
        ctx.event(None, "completed", "move completed and verified")
        metrics.moves_finished.labels(wf.COMPLETED).inc()
        return Outcome(completed=True)
    return Outcome(next_step=moved.step)


def _finish_fan_out(ctx: MoveContext, step: str) -> Outcome:
    unit_work.FAN_IN[step](ctx)
    return _advance(ctx, step)


def run_step(settings: Settings, move_id: str, step: str, token: str, owner: str) -> Outcome:
    """Run one step of a move (or dispatch its units). See the module docstring."""
    return _measured(step, "step", move_id, None, lambda: _run_step(settings, move_id, step, token, owner))


def run_unit(settings: Settings, move_id: str, step: str, unit: str, token: str, owner: str) -> Outcome:
    """Run one unit of a fan-out step."""
    return _measured(step, "unit", move_id, unit, lambda: _run_unit(settings, move_id, step, unit, token, owner))


def _measured(step: str, kind: str, move_id: str, unit: str | None, body) -> Outcome:
    started = time.monotonic()
    outcome_label = "error"
    try:
        with log_context(move_id=str(move_id), step=step, unit=unit):
            outcome = body()
            outcome_label = "completed" if outcome.completed else ("skipped" if outcome.skipped else "ok")
            if outcome.skipped and outcome.skipped.startswith("failed"):
                outcome_label = "failed"
            log.info("%s %s%s: %s in %.3fs%s", kind, step, f"/{unit}" if unit else "", outcome_label,
                     time.monotonic() - started, f" ({outcome.skipped})" if outcome.skipped else "")
        return outcome
    except SoftTimeLimitExceeded:
        outcome_label = "time_limit"
        raise
    except Exception:
        outcome_label = "retry"
        raise
    finally:
        metrics.step_duration.labels(step, kind).observe(time.monotonic() - started)
        metrics.steps_finished.labels(step, outcome_label).inc()


def _run_step(settings: Settings, move_id: str, step: str, token: str, owner: str) -> Outcome:
    store = MoveStore(settings.control_dsn)
    if step == wf.STEPS[0]:
        store.start(move_id, token)
    move = store.claim_step(move_id, step, token, owner, settings.moves.lease_ttl_s)
    if move is None:
        return Outcome(skipped=f"step {step} is not claimable (done, fenced, paused or leased elsewhere)")
    ctx = _context(settings, store, move, token, owner)
    try:
        ctx.event(step, "started", detail={"owner": owner, "attempt": move.attempt})
        if step in wf.FAN_OUT:
            if not store.has_units(move.id, step):
                store.ensure_units(move.id, token, step, unit_work.PLANNERS[step](ctx))
            pending = store.pending_units(move.id, step)
            store.release_step(move.id, token, owner)
            if pending:
                return Outcome(step=step, units=[u.unit for u in pending])
            return _finish_fan_out(ctx, step)
        STEP_WORK[step](ctx)
        return _advance(ctx, step)
    except Exception as exc:
        return _on_error(ctx, step, exc)
    finally:
        ctx.close()


def _run_unit(settings: Settings, move_id: str, step: str, unit: str, token: str, owner: str) -> Outcome:
    store = MoveStore(settings.control_dsn)
    row = store.claim_unit(move_id, step, unit, token, owner, settings.moves.lease_ttl_s)
    if row is None:
        return Outcome(skipped=f"unit {step}/{unit} is done, fenced or leased elsewhere")
    move = store.get(move_id)
    if move.step != step or move.state != wf.RUNNING:
        return Outcome(skipped=f"move is at {move.step} ({move.state})")
    ctx = _context(settings, store, move, token, owner)
    try:
        result = unit_work.WORK[step](ctx, row) or {}
        store.finish_unit(move.id, step, unit, token, owner, result)
        if store.count_pending(move.id, step) == 0:
            return _finish_fan_out(ctx, step)
        return Outcome()
    except Exception as exc:
        return _on_error(ctx, step, exc, unit=unit)
    finally:
        ctx.close()


def _release(ctx: MoveContext, step: str, unit: str | None) -> None:
    """Hand the lease back so the retry of this task (a new execution) can take over at once."""
    try:
        if unit:
            ctx.store.release_unit(ctx.move.id, step, unit, ctx.owner)
        else:
            ctx.store.release_step_lease(ctx.move.id, ctx.owner)
    except Exception:  # noqa: BLE001 - the control database may be the thing that is down
        log.warning("move %s: could not release the lease of %s; it expires after lease_ttl_s", ctx.move_id, step)


def _on_error(ctx: MoveContext, step: str, exc: Exception, unit: str | None = None) -> Outcome:
    where = f"{step}/{unit}" if unit else step
    if isinstance(exc, SoftTimeLimitExceeded):
        _release(ctx, step, unit)
        raise exc  # checkpointed: the task continues in a fresh execution
    if isinstance(exc, StaleToken | InvalidMoveState):
        current = _current_token(ctx)
        if not (isinstance(exc, StaleToken) and current == ctx.token):
            log.info("move %s %s: stopping: %s", ctx.move_id, where, exc)
            return Outcome(skipped=str(exc))
        # Our own attempt is current, yet something (the route's freeze) was changed out of band.
    elif is_transient(exc) and step != wf.STEPS[0]:
        # Mid-move outages are retried (Celery backoff); preflight rejects at once instead.
        _release(ctx, step, unit)
        try:
            ctx.event(step, "retry", f"{where}: transient error: {first_line(exc)}", {"unit": unit})
        except Exception:  # noqa: BLE001
            pass
        raise exc  # the task retries with backoff; after the last retry it calls fail_move
    if isinstance(exc, MigratorError):
        fail_move(ctx.settings, ctx.move_id, ctx.token, step, exc.message + (f" ({exc.hint})" if exc.hint else ""),
                  exc.code)
    else:
        log.exception("move %s %s: unexpected error", ctx.move_id, where)
        fail_move(ctx.settings, ctx.move_id, ctx.token, step, f"internal error in {where}: {first_line(exc)}",
                  "internal_error")
    return Outcome(skipped=f"failed: {first_line(exc)}")


def _current_token(ctx: MoveContext) -> str | None:
    try:
        return ctx.store.get(ctx.move.id).token
    except Exception:  # noqa: BLE001
        return None


def _route_flipped(settings: Settings, move) -> bool:
    """Whether the route already points at the target (the flip may have committed even if its
    reply was lost). When the Topology Service does not answer, assume it may have."""
    from migrator.topology.client import topology_client

    if move.flipped_at is not None:
        return True
    try:
        return topology_client(settings).classify(int(move.organization_id)).cell == move.target_cell
    except Exception:  # noqa: BLE001
        return True


def fail_move(settings: Settings, move_id: str, token: str, step: str, message: str, code: str) -> None:
    """Record a failure. Before the flip the freeze is lifted so the source is writable again."""
    store = MoveStore(settings.control_dsn)
    move = store.get(move_id)
    if move.token != token or move.state not in (wf.RUNNING, wf.QUEUED):
        return
    if step == "preflight":
        store.fail(move_id, token, step, message, code, state=wf.REJECTED)
        metrics.moves_finished.labels(wf.REJECTED).inc()
        return
    metrics.moves_finished.labels(wf.FAILED).inc()
    if code == "checksum_mismatch":
        metrics.verification_failures.inc()
    if step in wf.BEFORE_FLIP | {"flip"} and not _route_flipped(settings, move):
        lifted = lift_freeze(settings, move, token)
        store.merge_json(move_id, token, "report", {"freeze_lifted": True, "freeze_lift_problems": lifted})
    store.fail(move_id, token, step, message, code)


def lift_freeze(settings: Settings, move, token: str) -> list[str]:
    """Make the source writable again (guard off in both cells, route unfrozen). Best effort: a cell
    that does not answer is reported (its guard stays on, which only refuses writes)."""
    from migrator.cells.guard import unfreeze_org
    from migrator.db import connection
    from migrator.topology.client import topology_client

    problems = []
    org = int(move.organization_id)
    for cell in (move.source_cell, move.target_cell):
        try:
            with connection(settings.cell(cell).dsn, what=f"cell {cell!r} database", autocommit=True) as conn:
                unfreeze_org(conn, org)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{cell}: {first_line(exc)}")
    try:
        topo = topology_client(settings)
        route = topo.classify(org)
        if route.held_by(token) and route.cell == move.source_cell:
            topo.unfreeze(org, token, actor=f"move {move.id}", reason="move failed before the flip")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"topology: {first_line(exc)}")
    return problems
