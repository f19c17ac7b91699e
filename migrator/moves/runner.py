"""Runs one step (or one unit of a fan-out step) of a move, fenced and idempotent.

The Celery tasks in ``tasks/`` call ``run_step`` / ``run_unit`` and enqueue what the returned
:class:`Outcome` says, after the state change has committed. Each step's work lives in its module
under ``migrator/moves/steps/``; this file only sequences it, and hands errors to
``migrator/moves/recovery.py``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded

from migrator.config import Settings
from migrator.db import first_line
from migrator.errors import MigratorError
from migrator.moves import recovery, steps, throttle, window
from migrator.moves import workflow as wf
from migrator.moves.context import MoveContext
from migrator.moves.lease import LeaseKeeper
from migrator.moves.recovery import Disposition
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
    defer_s: float | None = None  # enqueue ``next_step`` / ``units`` after this many seconds (throttled)


def _advance(ctx: MoveContext, step: str) -> Outcome:
    moved = ctx.store.advance(ctx.move.id, ctx.token, step)
    if moved is None:
        return Outcome(skipped=f"step {step} already advanced")
    ctx.event(step, "finished")
    if moved.state == wf.COMPLETED:
        if moved.throttle:  # a slow-down the last units met: over with the move
            ctx.store.clear_throttle(moved.id, ctx.token)
        ctx.event(None, "completed", "move completed and verified")
        metrics.moves_finished.labels(wf.COMPLETED).inc()
        return Outcome(completed=True)
    return Outcome(next_step=moved.step)


def _finish_fan_out(ctx: MoveContext, step: str) -> Outcome:
    steps.get(step).fan_in(ctx)
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


def _lease_ttl(settings: Settings, move, step: str) -> float:
    """Short inside the write window (renewed by a LeaseKeeper thread), long outside it."""
    m = settings.moves
    return m.window_lease_ttl_s if window.inside(move.strategy, step) else m.lease_ttl_s


def _keeper(settings: Settings, store: MoveStore, move, token: str, owner: str, ttl: float, step: str,
            unit: str | None = None):
    """A LeaseKeeper while the lease is short (inside the write window); else nothing to keep."""
    if ttl >= settings.moves.lease_ttl_s:
        return contextlib.nullcontext()
    return LeaseKeeper(store, move.id, token, owner, ttl, step=step, unit=unit)


def _run_step(settings: Settings, move_id: str, step: str, token: str, owner: str) -> Outcome:
    store = MoveStore(settings.control_dsn)
    if step == wf.FIRST_STEP:
        store.start(move_id, token)
    ttl = _lease_ttl(settings, store.get(move_id), step)
    move = store.claim_step(move_id, step, token, owner, ttl)
    if move is None:
        return Outcome(skipped=f"step {step} is not claimable (done, fenced, paused or leased elsewhere)")
    ctx = MoveContext(settings=settings, store=store, move=move, token=token, owner=owner, lease_ttl_s=ttl)
    work = steps.get(step)
    try:
        with _keeper(settings, store, move, token, owner, ttl, step):
            if not work.fans_out:
                ctx.pacer = throttle.Pacer(settings, store, move, token, step)
                ctx.pacer.start()
            ctx.event(step, "started", detail={"owner": owner, "attempt": move.attempt})
            if work.fans_out:
                if not store.has_units(move.id, step):
                    store.ensure_units(move.id, token, step, work.plan(ctx))
                pending = store.pending_units(move.id, step)
                store.release_step(move.id, token, owner)
                if pending:
                    return Outcome(step=step, units=[u.unit for u in pending])
                return _finish_fan_out(ctx, step)
            work.run(ctx)
            return _advance(ctx, step)
    except Exception as exc:
        return _on_error(ctx, step, exc)
    finally:
        ctx.close()


def _run_unit(settings: Settings, move_id: str, step: str, unit: str, token: str, owner: str) -> Outcome:
    store = MoveStore(settings.control_dsn)
    ttl = _lease_ttl(settings, store.get(move_id), step)
    row = store.claim_unit(move_id, step, unit, token, owner, ttl)
    if row is None:
        return Outcome(skipped=f"unit {step}/{unit} is done, fenced or leased elsewhere")
    move = store.get(move_id)
    if move.step != step or move.state != wf.RUNNING:
        return Outcome(skipped=f"move is at {move.step} ({move.state})")
    ctx = MoveContext(settings=settings, store=store, move=move, token=token, owner=owner, lease_ttl_s=ttl)
    try:
        with _keeper(settings, store, move, token, owner, ttl, step, unit):
            ctx.pacer = throttle.Pacer(settings, store, move, token, step, tables=[row.table_name], unit=unit)
            ctx.pacer.start()
            result = steps.get(step).unit(ctx, row) or {}
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


def _attempt_is_current(ctx: MoveContext) -> bool:
    try:
        return ctx.store.get(ctx.move.id).token == ctx.token
    except Exception:  # noqa: BLE001
        return False


def _on_error(ctx: MoveContext, step: str, exc: Exception, unit: str | None = None) -> Outcome:
    where = f"{step}/{unit}" if unit else step
    if isinstance(exc, throttle.Throttled):
        _release(ctx, step, unit)  # its batches are checkpointed: the next execution resumes there
        log.info("move %s %s: throttled, again in %gs: %s", ctx.move_id, where, exc.pause_s, exc.verdict.reason)
        if unit:
            return Outcome(step=step, units=[unit], defer_s=exc.pause_s, skipped=f"throttled: {exc.verdict.reason}")
        return Outcome(next_step=step, defer_s=exc.pause_s, skipped=f"throttled: {exc.verdict.reason}")
    disposition = recovery.classify(exc, step, attempt_is_current=lambda: _attempt_is_current(ctx))
    if disposition is Disposition.CONTINUE:
        _release(ctx, step, unit)
        raise exc  # checkpointed: the task continues in a fresh execution
    if disposition is Disposition.STOP:
        log.info("move %s %s: stopping: %s", ctx.move_id, where, exc)
        return Outcome(skipped=str(exc))
    if disposition is Disposition.RETRY:
        _release(ctx, step, unit)
        try:
            ctx.event(step, "retry", f"{where}: transient error: {first_line(exc)}", {"unit": unit})
        except Exception:  # noqa: BLE001
            pass
        raise exc  # the task retries with backoff; after the last retry it gives up (recovery.give_up)
    if not isinstance(exc, MigratorError):
        log.exception("move %s %s: unexpected error", ctx.move_id, where)
    message, code = recovery.failure(exc, where)
    recovery.fail_move(ctx.settings, ctx.move_id, ctx.token, step, message, code)
    return Outcome(skipped=f"failed: {first_line(exc)}")
