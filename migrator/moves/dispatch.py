"""Sending wake-up calls to the workers: which Celery task runs a step, on which queue.

The domain library never imports ``tasks/``: it sends tasks by name. ``TASK_QUEUES`` is the one
routing table, used here and by the Celery app in ``tasks/`` (control steps, row copy, blob copy).
"""

from __future__ import annotations

from celery import Celery

from migrator.config import Settings

CONTROL, ROWS, BLOBS = "control", "rows", "blobs"

TASK_QUEUES: dict[str, str] = {
    "migrator.preflight": CONTROL,
    "migrator.capture": CONTROL,
    "migrator.catch_up": CONTROL,
    "migrator.final_delta": CONTROL,
    "migrator.freeze": CONTROL,
    "migrator.drain": CONTROL,
    "migrator.copy_rows": CONTROL,
    "migrator.copy_rows_unit": ROWS,
    "migrator.copy_blobs": CONTROL,
    "migrator.copy_blobs_unit": BLOBS,
    "migrator.verify": CONTROL,
    "migrator.verify_unit": ROWS,
    "migrator.flip": CONTROL,
    "migrator.unfreeze": CONTROL,
    "migrator.abort": CONTROL,
    "migrator.cleanup": CONTROL,
    "migrator.reconcile": CONTROL,
    "migrator.collect_captures": CONTROL,
    # The rebalancer (migrator/rebalance/, tasks/rebalance.py).
    "migrator.rebalance_readings": CONTROL,
    "migrator.rebalance_alert": CONTROL,
    "migrator.rebalance_apply": CONTROL,
    "migrator.rebalance_tick": CONTROL,
}


def step_task(step: str) -> str:
    return f"migrator.{step}"


def unit_task(step: str) -> str:
    return f"migrator.{step}_unit"


def queue_name(settings: Settings, queue: str) -> str:
    return f"{settings.celery.queue_prefix}{queue}"


def all_queues(settings: Settings) -> list[str]:
    return [queue_name(settings, q) for q in (CONTROL, ROWS, BLOBS)]


def kombu_queues(settings: Settings) -> list:
    """The queues, each reached through the default (nameless) exchange with its own name as the
    routing key. With Redis that means a message is pushed straight onto the queue's list: no
    exchange binding is consulted, so a flushed Redis (which loses kombu's bindings along with the
    messages) cannot make later messages vanish silently."""
    from kombu import Exchange, Queue

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

    def send(self, name: str, **kwargs) -> str:
        queue = queue_name(self.settings, TASK_QUEUES[name])
        result = self.app.send_task(name, kwargs=kwargs, queue=queue)
        return result.id

    def step(self, move, step: str, token: str | None = None) -> str:
        return self.send(step_task(step), move_id=str(move.id), organization_id=int(move.organization_id),
                         token=token or move.token)

    def unit(self, move, step: str, unit: str, token: str | None = None) -> str:
        return self.send(unit_task(step), move_id=str(move.id), organization_id=int(move.organization_id),
                         unit=unit, token=token or move.token)

    def abort(self, move, token: str | None = None) -> str:
        return self.send("migrator.abort", move_id=str(move.id), organization_id=int(move.organization_id),
                         token=token or move.token)

    def cleanup(self, move, force: bool = False, actor: str = "") -> str:
        return self.send("migrator.cleanup", move_id=str(move.id), organization_id=int(move.organization_id),
                         force=force, actor=actor)
