"""The Celery application, configured from the migrator's settings.

Settings suited to idempotent, fenced tasks (docs/adr/0001-architecture.md): late acks, reject on
worker lost, prefetch 1, a Redis visibility timeout longer than the longest task, soft time limits.
"""

from __future__ import annotations

import sys

from celery import Celery
from celery.signals import worker_process_init

from migrator.config import get_settings
from migrator.control.engine import control_engine
from migrator.dsn import install_log_masking, redact
from migrator.errors import MigratorError
from migrator.moves.dispatch import broker_transport_options, kombu_queues, queue_name, task_queues
from tasks import observability as worker_observability

try:
    settings = get_settings()
except MigratorError as exc:
    # `celery -A tasks …` without a usable config: the same two lines as `migrator`, not Celery's traceback
    # of the import (SystemExit passes through Celery's "unable to load the application" handler).
    sys.stderr.write(f"error: {redact(exc.message)}\n" + (f"hint: {redact(exc.hint)}\n" if exc.hint else ""))
    raise SystemExit(exc.exit_code) from None
# Before any task module (and so any metric) is imported.
worker_observability.prepare(settings)
worker_observability.connect(settings)

app = Celery("cells-migrator", broker=settings.broker_url, backend=settings.celery.result_backend,
             include=["tasks.steps", "tasks.maintenance", "tasks.rebalance"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_ignore_result=settings.celery.result_backend is None,
    broker_transport_options=broker_transport_options(settings),
    broker_connection_retry_on_startup=True,
    task_soft_time_limit=settings.celery.task_soft_time_limit_s,
    task_time_limit=settings.celery.task_time_limit_s,
    # Each queue through the default exchange, routing key = its name (see kombu_queues).
    task_queues=kombu_queues(settings),
    task_create_missing_queues=False,
    task_default_queue=queue_name(settings, "control"),
    task_routes={name: {"queue": queue_name(settings, q)} for name, q in task_queues().items()},
    worker_hijack_root_logger=True,
    beat_schedule={
        "collect-abandoned-captures": {"task": "migrator.collect_captures", "schedule": settings.online.collect_every_s,
                                       "options": {"queue": queue_name(settings, "control"),
                                                   "expires": settings.online.collect_every_s}},
        "reconcile-moves": {"task": "migrator.reconcile", "schedule": settings.moves.reconcile_every_s,
                            "options": {"queue": queue_name(settings, "control"),
                                        "expires": settings.moves.reconcile_every_s}},
        # Moves inside their write window: every second (a crashed worker there costs refused writes).
        "reconcile-window-moves": {"task": "migrator.reconcile", "schedule": settings.moves.window_reconcile_every_s,
                                   "kwargs": {"window_only": True},
                                   "options": {"queue": queue_name(settings, "control"),
                                               "expires": settings.moves.window_reconcile_every_s}},
        # The rebalancer: capacity readings into the cache, and pending plan items started as slots free.
        "rebalance-readings": {"task": "migrator.rebalance_readings", "schedule": settings.rebalance.readings_every_s,
                               "options": {"queue": queue_name(settings, "control"),
                                           "expires": settings.rebalance.readings_every_s}},
        "rebalance-tick": {"task": "migrator.rebalance_tick", "schedule": settings.rebalance.tick_every_s,
                           "options": {"queue": queue_name(settings, "control"),
                                       "expires": settings.rebalance.tick_every_s}},
    },
)


@worker_process_init.connect
def _fresh_connections(**_):
    """Each forked pool process opens its own database connections."""

    control_engine.cache_clear()
    install_log_masking()
