"""The reconciler: wakes up moves whose wake-up call was lost.

Run periodically (celery beat). A move that should be progressing but whose heartbeat is older
than ``moves.stale_after_s`` (its message was lost with a flushed Redis, its worker was killed) gets
its current step enqueued again. Duplicates are harmless: steps are fenced and idempotent.
"""

from __future__ import annotations

import logging

from migrator.config import Settings
from migrator.moves import workflow as wf
from migrator.moves.dispatch import Dispatcher
from migrator.moves.store import MoveStore
from migrator.observability import metrics

log = logging.getLogger(__name__)


def reconcile(settings: Settings, dispatcher: Dispatcher) -> list[dict]:
    store = MoveStore(settings.control_dsn)
    actions = []
    stale = store.stale(settings.moves.stale_after_s, [wf.QUEUED, wf.RUNNING, wf.ABORTING])
    for move in stale:
        if move.state == wf.ABORTING:
            dispatcher.abort(move)
            what = "abort"
        else:
            dispatcher.step(move, move.step)
            what = move.step
        store.touch(move.id)
        metrics.reconciler_reenqueues.inc()
        store.event(move.id, move.step, "reconciled", f"no progress for {settings.moves.stale_after_s:g}s; "
                    f"re-enqueued {what}", actor="reconciler")
        log.warning("reconciler: move %s (%s) re-enqueued %s", move.id, move.state, what)
        actions.append({"move_id": str(move.id), "state": move.state, "step": move.step, "enqueued": what})
    return actions
