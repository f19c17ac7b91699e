"""The rebalancer's Celery tasks: refresh readings (beat), handle an alert, apply a plan, tick (beat).

Thin: each calls ``migrator.rebalance.service.Rebalancer``. Moves the rebalancer starts are sent
with this worker's own Celery app.
"""

from __future__ import annotations

import logging

from migrator.config import get_settings
from migrator.db import is_transient
from migrator.moves.dispatch import Dispatcher
from migrator.rebalance.service import Rebalancer
from tasks.app import app

log = logging.getLogger(__name__)


def _rebalancer() -> Rebalancer:
    settings = get_settings()
    return Rebalancer(settings, dispatcher=Dispatcher(settings, app))


def _enqueue_alert(alert_id: int, cell: str | None) -> None:
    Dispatcher(get_settings(), app).send("migrator.rebalance_alert", alert_id=alert_id, cell=cell)


@app.task(name="migrator.rebalance_readings", bind=True, max_retries=3)
def refresh_readings_task(self):
    try:
        return _rebalancer().refresh()
    except Exception as exc:
        if is_transient(exc):
            raise self.retry(exc=exc, countdown=10) from None
        raise


@app.task(name="migrator.rebalance_alert", bind=True, max_retries=5)
def handle_alert_task(self, alert_id: int, cell: str | None = None):
    """A firing capacity alert for ``cell`` (the argument is there for Flower)."""
    try:
        return _rebalancer().handle_alert(alert_id)
    except Exception as exc:
        if is_transient(exc):
            # The alert stays claimed ("handling"): the tick hands it back after a while.
            raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30)) from None
        raise


@app.task(name="migrator.rebalance_apply")
def apply_plan_task(plan_id: str, actor: str = "rebalancer"):
    return _rebalancer().apply(plan_id, actor)


@app.task(name="migrator.rebalance_tick")
def tick_task():
    return _rebalancer().tick(enqueue_alert=_enqueue_alert)
