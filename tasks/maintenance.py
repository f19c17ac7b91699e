"""Tasks outside the step sequence: abort, cleanup, and the periodic reconciler."""

from __future__ import annotations

import uuid

from migrator.config import get_settings
from migrator.db import is_transient
from migrator.moves import steps
from migrator.moves.change_log import collect_abandoned
from migrator.moves.dispatch import Dispatcher
from migrator.moves.reconciler import reconcile
from migrator.moves.steps.abort import FLIPPED, run_abort
from migrator.moves.steps.cleanup import run_cleanup
from migrator.moves.store import MoveStore
from migrator.moves.throttle import Throttled
from tasks.app import app


@app.task(name=steps.get("abort").task, bind=True, max_retries=20)
def abort_task(self, move_id: str, organization_id: int, token: str):
    try:
        result = run_abort(get_settings(), move_id, token, owner=f"{self.request.id}:{uuid.uuid4().hex[:12]}")
    except Exception as exc:
        if is_transient(exc):
            raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 60)) from None
        raise
    if result == FLIPPED:
        move_store_dispatch(move_id, "unfreeze")
    return result


def move_store_dispatch(move_id: str, step: str) -> None:

    settings = get_settings()
    move = MoveStore(settings.control_dsn).get(move_id)
    Dispatcher(settings, app).step(move, step)


@app.task(name=steps.get("cleanup").task, bind=True, max_retries=10)
def cleanup_task(self, move_id: str, organization_id: int, force: bool = False, actor: str = "",
                 accept_differences: str | None = None):
    try:
        owner = f"{self.request.id}:{uuid.uuid4().hex[:12]}"
        return run_cleanup(get_settings(), move_id, force=force, actor=actor, owner=owner,
                           accept_differences=accept_differences)
    except Throttled as exc:  # a health signal says stop: again later, without using up a retry
        self.apply_async(kwargs=self.request.kwargs, countdown=exc.pause_s)
        return {"throttled": exc.verdict.reason}
    except Exception as exc:
        if is_transient(exc):
            raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 60)) from None
        raise


@app.task(name="migrator.collect_captures")
def collect_captures_task():
    """Remove change captures (and their logs) whose online move ended without removing them."""

    settings = get_settings()
    return collect_abandoned(settings, MoveStore(settings.control_dsn))


@app.task(name="migrator.reconcile")
def reconcile_task(window_only: bool = False):
    settings = get_settings()
    return reconcile(settings, Dispatcher(settings, app), window_only=window_only)
