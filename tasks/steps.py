"""One Celery task per move step (``migrator.preflight`` … ``migrator.unfreeze``) plus unit tasks.

Made from the step registry (``migrator/moves/steps/``). Thin: each calls ``migrator.moves.runner``
and enqueues what the outcome says, after the state change has committed. Arguments carry the move
id and organization so Flower shows them. ``abort`` and ``cleanup`` are in ``tasks/maintenance.py``.
"""

from __future__ import annotations

import logging
import uuid

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from migrator.config import get_settings
from migrator.db import first_line
from migrator.moves import recovery, steps
from migrator.moves.dispatch import Dispatcher
from migrator.moves.recovery import Disposition
from migrator.moves.runner import Outcome, run_step, run_unit
from migrator.moves.store import MoveStore
from migrator.observability.logs import log_context
from tasks.app import app

log = logging.getLogger(__name__)

MAX_RETRIES = 8


class MoveTask(Task):
    abstract = True
    autoretry_for = ()
    max_retries = MAX_RETRIES


def _owner(task: Task) -> str:
    """A lease owner unique to this execution: a message delivered twice (same task id) must not
    let two executions hold one lease."""
    return f"{task.request.id or 'local'}:{uuid.uuid4().hex[:12]}"


def _progress(task: Task, meta: dict) -> None:
    """Progress as task state meta (shown by Flower) when a result backend is configured."""
    if task.app.conf.result_backend and task.request.id:
        task.update_state(state="PROGRESS", meta=meta)


def _follow(outcome: Outcome, move_id: str, token: str) -> dict:
    """Enqueue what comes next (the state change it depends on is already committed)."""
    settings = get_settings()
    dispatcher = Dispatcher(settings, app)
    if outcome.units or outcome.next_step:
        move = MoveStore(settings.control_dsn).get(move_id)
        for unit in outcome.units:
            dispatcher.unit(move, outcome.step, unit, token, countdown=outcome.defer_s)
        if outcome.next_step:
            dispatcher.step(move, outcome.next_step, token, countdown=outcome.defer_s)
    return {"next_step": outcome.next_step, "units": len(outcome.units), "completed": outcome.completed,
            "skipped": outcome.skipped, "deferred_s": outcome.defer_s}


def _retry_or_fail(task: Task, exc: Exception, move_id: str, token: str, step: str):
    """Errors the runner raised (transient ones) or that came before it: retry with backoff, then give up."""
    retries = get_settings().moves.task_retries
    if recovery.classify(exc, step) is Disposition.RETRY and task.request.retries < retries:
        raise task.retry(exc=exc, countdown=min(2 ** task.request.retries, 60), max_retries=retries)
    recovery.give_up(get_settings(), move_id, token, step, exc, task.request.retries)
    return {"failed": first_line(exc)}


def _make_step_task(step: str):
    @app.task(name=steps.get(step).task, bind=True, base=MoveTask)
    def step_task(self, move_id: str, organization_id: int, token: str):
        _progress(self, {"move_id": move_id, "organization_id": organization_id, "step": step})
        try:
            with log_context(organization=organization_id):
                outcome = run_step(get_settings(), move_id, step, token, owner=_owner(self))
        except SoftTimeLimitExceeded:
            raise self.retry(countdown=1) from None  # checkpointed; continue in a fresh task
        except Exception as exc:  # noqa: BLE001 - transient errors come here from the runner
            return _retry_or_fail(self, exc, move_id, token, step)
        return _follow(outcome, move_id, token)

    return step_task


def _make_unit_task(step: str):
    @app.task(name=steps.get(step).unit_task, bind=True, base=MoveTask)
    def unit_task(self, move_id: str, organization_id: int, unit: str, token: str):
        _progress(self, {"move_id": move_id, "organization_id": organization_id, "step": step, "unit": unit})
        try:
            with log_context(organization=organization_id):
                outcome = run_unit(get_settings(), move_id, step, unit, token, owner=_owner(self))
        except SoftTimeLimitExceeded:
            raise self.retry(countdown=1) from None
        except Exception as exc:  # noqa: BLE001
            return _retry_or_fail(self, exc, move_id, token, step)
        return _follow(outcome, move_id, token)

    return unit_task


STEP_TASKS = {name: _make_step_task(name) for name, step in steps.registry().items() if not step.operator}
UNIT_TASKS = {name: _make_unit_task(name) for name, step in steps.registry().items() if step.fans_out}
