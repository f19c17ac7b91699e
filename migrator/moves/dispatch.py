"""Sending wake-up calls to the workers: which Celery task runs a step, on which queue.

The domain library never imports ``tasks/``: it sends tasks by name. ``task_queues()`` is the one
routing table (from the step registry), used here and by the Celery app in ``tasks/``.
"""

from __future__ import annotations

from functools import cache

from celery import Celery
from kombu import Exchange, Queue

from migrator.config import Settings
from migrator.moves import steps
from migrator.moves.steps.base import BLOBS, CONTROL, QUEUES, ROWS

__all__ = ["BLOBS", "CONTROL", "ROWS", "Dispatcher", "all_queues", "task_queues"]

# Tasks outside the step registry: the reconciler, capture collection and the rebalancer.
OTHER_TASKS: dict[str, str] = {
    "migrator.reconcile": CONTROL,
    "migrator.collect_captures": CONTROL,
    # The rebalancer (migrator/rebalance/, tasks/rebalance.py).
    "migrator.rebalance_readings": CONTROL,
    "migrator.rebalance_alert": CONTROL,
    "migrator.rebalance_apply": CONTROL,
    "migrator.rebalance_tick": CONTROL,
}


@cache
def task_queues() -> dict[str, str]:
    """Task name -> queue: every step's task (and its unit task) from the step registry, and the rest."""
    routes = {}
    for step in steps.registry().values():
        routes[step.task] = step.queue
        if step.fans_out:
            routes[step.unit_task] = step.unit_queue
    return {**routes, **OTHER_TASKS}


def queue_name(settings: Settings, queue: str) -> str:
    return f"{settings.celery.queue_prefix}{queue}"


def all_queues(settings: Settings) -> list[str]:
    return [queue_name(settings, q) for q in QUEUES]


def kombu_queues(settings: Settings) -> list:
    """The queues, each reached through the default (nameless) exchange with its own name as the
    routing key. With Redis that means a message is pushed straight onto the queue's list: no
    exchange binding is consulted, so a flushed Redis (which loses kombu's bindings along with the
    messages) cannot make later messages vanish silently."""

    return [Queue(q, Exchange("", type="direct"), routing_key=q) for q in all_queues(settings)]


def broker_transport_options(settings: Settings) -> dict:
    # The visibility timeout must exceed the longest task, or Redis hands it to a second worker.
    return {"visibility_timeout": settings.celery.visibility_timeout_s}


_CLIENT_APPS: dict[tuple, Celery] = {}


def _client_app(settings: Settings) -> Celery:
    key = (settings.broker_url, settings.celery.visibility_timeout_s, settings.celery.queue_prefix)
    app = _CLIENT_APPS.get(key)
    if app is None:
        app = Celery("cells-migrator-client", broker=settings.broker_url, set_as_current=False)
        app.conf.broker_transport_options = broker_transport_options(settings)
        app.conf.broker_connection_retry_on_startup = True
        app.conf.task_queues = kombu_queues(settings)
        app.conf.task_create_missing_queues = False
        _CLIENT_APPS[key] = app
    return app


class Dispatcher:
    """Enqueues step and unit tasks by name (``app``: the worker's own Celery app, when inside one)."""

    def __init__(self, settings: Settings, app: Celery | None = None):
        self.settings = settings
        self.app = app or _client_app(settings)

    def send(self, name: str, countdown: float | None = None, **kwargs) -> str:
        queue = queue_name(self.settings, task_queues()[name])
        result = self.app.send_task(name, kwargs=kwargs, queue=queue, countdown=countdown)
        return result.id

    def step(self, move, step: str, token: str | None = None, countdown: float | None = None) -> str:
        return self.send(steps.get(step).task, countdown, move_id=str(move.id),
                         organization_id=int(move.organization_id), token=token or move.token)

    def unit(self, move, step: str, unit: str, token: str | None = None, countdown: float | None = None) -> str:
        return self.send(steps.get(step).unit_task, countdown, move_id=str(move.id),
                         organization_id=int(move.organization_id), unit=unit, token=token or move.token)

    def abort(self, move, token: str | None = None) -> str:
        return self.send(steps.get("abort").task, move_id=str(move.id), organization_id=int(move.organization_id),
                         token=token or move.token)

    def cleanup(self, move, force: bool = False, actor: str = "", accept_differences: str | None = None) -> str:
        return self.send(steps.get("cleanup").task, move_id=str(move.id), organization_id=int(move.organization_id),
                         force=force, actor=actor, accept_differences=accept_differences)
