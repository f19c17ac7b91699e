"""Putting things back, in one place: what an error means for a move, and how a freeze is lifted.

- :func:`classify`: the one decision on an error inside a step: ``STOP`` (this worker acts for an
  attempt that was superseded, another execution took its lease over, or the move stopped),
  ``RETRY`` (a cell, the control database or the Topology Service did not answer, or a concurrent
  execution wrote the same keys: the task retries with backoff), ``CONTINUE`` (a soft time limit:
  the work is checkpointed and goes on in a fresh task), ``FAIL`` (anything else).
- :func:`fail_move`: record a failure; before the flip the freeze is lifted, so the source is
  writable again (a failed move never leaves its organization read-only).
- :func:`lift_freeze`: the guard off in the given cells and the route's freeze released, if this
  move (any of its attempts) holds it. Used by failures, abort, flip and unfreeze.
- :func:`take_over_freeze`: hand the route's freeze from an earlier attempt to a new token.
- :func:`attempt_tokens`: every token the move has had (the fencing set).
"""

from __future__ import annotations

import enum
import logging

import psycopg
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import func

from migrator.cells.guard import unfreeze_org
from migrator.config import Settings
from migrator.db import connection, first_line, is_transient
from migrator.errors import InvalidMoveState, LeaseLost, MigratorError, StaleToken
from migrator.moves import workflow as wf
from migrator.moves.store import MoveStore
from migrator.observability import metrics

log = logging.getLogger(__name__)


class Disposition(enum.Enum):
    STOP = "stop"
    RETRY = "retry"
    CONTINUE = "continue"
    FAIL = "fail"


def classify(exc: BaseException, step: str, *, attempt_is_current=lambda: False) -> Disposition:
    """What an error raised while running ``step`` means (see the module docstring).

    ``attempt_is_current()``: whether the worker's token is still the move's. A StaleToken raised
    although it is means something outside the move (the route's freeze) changed: a failure.
    Preflight does not retry: an unreachable cell rejects the move at once, with the source untouched.
    """
    if isinstance(exc, SoftTimeLimitExceeded):
        return Disposition.CONTINUE
    if isinstance(exc, InvalidMoveState | LeaseLost):
        return Disposition.STOP
    if isinstance(exc, StaleToken):
        return Disposition.FAIL if attempt_is_current() else Disposition.STOP
    if step != wf.FIRST_STEP and (is_transient(exc) or _concurrent_write(exc)):
        return Disposition.RETRY
    return Disposition.FAIL


def _concurrent_write(exc: BaseException) -> bool:
    """A unique violation while copying: another execution of the same unit or round wrote the same keys
    first (it took over a lease that lapsed). The retry takes the idempotent upsert path. A real
    conflict with another organization's rows keeps failing and ends the move after the last retry."""
    orig = getattr(exc, "orig", None) or exc
    return isinstance(orig, psycopg.errors.UniqueViolation)


def failure(exc: BaseException, where: str) -> tuple[str, str]:
    """(message, code) recorded on the move for an error that fails it."""
    if isinstance(exc, MigratorError):
        return exc.message + (f" ({exc.hint})" if exc.hint else ""), exc.code
    if is_transient(exc):
        return f"{where}: {first_line(exc)}", "cell_unavailable"
    return f"internal error in {where}: {first_line(exc)}", "internal_error"


def attempt_tokens(move) -> list[str]:
    """Every token this move has had, the current one first."""
    return [move.token, *[t for t in (move.previous_tokens or []) if t != move.token]]


def take_over_freeze(topology, move, new_token: str, *, actor: str, reason: str) -> bool:
    """If an attempt of this move holds the route's freeze, hand it to ``new_token``. True if it did.

    Tries each of the move's tokens with a fenced refence; no read of the route's token is needed.
    """
    org = int(move.organization_id)
    for old in attempt_tokens(move):
        if old == new_token:
            continue
        try:
            topology.refence(org, old, new_token, actor=actor, reason=reason)
            return True
        except StaleToken:
            continue
    return False


def lift_freeze(settings: Settings, move, token: str, *, cells, reason: str, actor: str | None = None,
                best_effort: bool = False, leave_foreign: bool = False, topology=None, cell_conn=None) -> list[str]:
    """Guard off in ``cells``; the route's freeze released if this move holds it.

    ``best_effort``: a cell or the Topology Service that does not answer is reported in the returned
    list instead of raised (its guard stays on, which only refuses writes), and a freeze held by
    someone else is left alone. Otherwise every error is raised (the caller's task retries);
    ``leave_foreign`` leaves a freeze held by someone else alone instead of raising StaleToken.
    ``cell_conn(cell)``: a step's own connections (MoveContext.cell_conn); else each cell is connected.
    """
    # deferred: the gRPC client is slow to import and only this path needs it
    from migrator.topology.client import topology_client

    org = int(move.organization_id)
    actor = actor or f"move {move.id}"
    problems: list[str] = []
    for cell in cells:
        try:
            if cell_conn is not None:
                unfreeze_org(cell_conn(cell), org)
                continue
            with connection(settings.cell(cell).dsn, what=f"cell {cell!r} database", autocommit=True) as conn:
                unfreeze_org(conn, org)
        except Exception as exc:
            if not best_effort:
                raise
            problems.append(f"{cell}: {first_line(exc)}")
    try:
        topo = topology or topology_client(settings, shared=True)
        take_over_freeze(topo, move, token, actor=actor, reason=reason)
        topo.unfreeze(org, token, actor=actor, reason=reason)
    except StaleToken as exc:
        if not (best_effort or leave_foreign):
            raise
        log.info("move %s: the route's freeze is not this move's; left alone (%s)", move.id, first_line(exc))
    except Exception as exc:
        if not best_effort:
            raise
        problems.append(f"topology: {first_line(exc)}")
    return problems


def _route_flipped(settings: Settings, move) -> bool:
    """Whether the route already points at the target (the flip may have committed even if its reply
    was lost). When the Topology Service does not answer, assume it may have."""
    # deferred: the gRPC client is slow to import and only this path needs it
    from migrator.topology.client import topology_client

    if move.flipped_at is not None:
        return True
    try:
        return topology_client(settings, shared=True).classify(int(move.organization_id)).cell == move.target_cell
    except Exception:  # noqa: BLE001
        return True


def fail_move(settings: Settings, move_id: str, token: str, step: str, message: str, code: str) -> None:
    """Record a failure of the current attempt. Before the flip the freeze is lifted (both cells and the
    route) so the source is writable again; a failed preflight rejects the move."""
    store = MoveStore(settings.control_dsn)
    move = store.get(move_id)
    if move.token != token or move.state not in (wf.RUNNING, wf.QUEUED):
        return
    if step == wf.FIRST_STEP:
        store.fail(move_id, token, step, message, code, state=wf.REJECTED)
        metrics.moves_finished.labels(wf.REJECTED).inc()
        return
    metrics.moves_finished.labels(wf.FAILED).inc()
    if code == "checksum_mismatch":
        metrics.verification_failures.inc()
    if wf.is_before_flip(step, move.flipped_at is not None) and not _route_flipped(settings, move):
        problems = lift_freeze(settings, move, token, cells=(move.source_cell, move.target_cell),
                               reason="move failed before the flip", best_effort=True)
        lifted: dict = {"freeze_lifted": True}
        if move.frozen_at is not None and move.unfrozen_at is None:
            lifted["unfrozen_at"] = func.now()  # the write window closes here (migrator/moves/window.py)
        store.set_fields(move_id, token, **lifted)
        if problems:
            store.merge_json(move_id, token, "report", {"freeze_lift_problems": problems})
    store.fail(move_id, token, step, message, code)


def give_up(settings: Settings, move_id: str, token: str, step: str, exc: BaseException, retries: int) -> None:
    """A task's last retry failed too: the move fails (and its freeze is lifted before the flip)."""
    message, code = failure(exc, step)
    fail_move(settings, move_id, token, step, f"{step}: gave up after {retries} retries: {message}", code)
