"""The reconciler: wakes up moves whose wake-up call was lost.

Run periodically (celery beat). A move that should be progressing but whose heartbeat is older
than ``moves.stale_after_s`` (its message was lost with a flushed Redis, its worker was killed) gets
its current step enqueued again; a move inside its write window is looked at every
``moves.window_reconcile_every_s`` and counts as stale after ``moves.window_stale_after_s``.
Duplicates are harmless: steps are fenced and idempotent.
"""

from __future__ import annotations

import logging

from migrator.config import Settings
from migrator.moves import workflow as wf
from migrator.moves.dispatch import Dispatcher
from migrator.moves.store import MoveStore
from migrator.observability import metrics

log = logging.getLogger(__name__)


def reconcile(settings: Settings, dispatcher: Dispatcher, *, window_only: bool = False) -> list[dict]:
    """Re-enqueue stale moves. Moves inside their write window count as stale after
    ``moves.window_stale_after_s`` (their leases are short and renewed every second), the others after
    ``moves.stale_after_s``. ``window_only``: the frequent pass (``moves.window_reconcile_every_s``)."""
    store = MoveStore(settings.control_dsn)
    m = settings.moves
    active = [wf.QUEUED, wf.RUNNING, wf.ABORTING]
    stale = [(move, m.window_stale_after_s) for move in store.stale(m.window_stale_after_s, active, in_window=True)]
    if not window_only:
        stale += [(move, m.stale_after_s) for move in store.stale(m.stale_after_s, active, in_window=False)]
    actions = []
    for move, after_s in stale:
        if move.state == wf.ABORTING:
            dispatcher.abort(move)
            what = "abort"
        else:
            dispatcher.step(move, move.step)
            what = move.step
        store.touch(move.id)
        metrics.reconciler_reenqueues.inc()
        store.event(move.id, move.step, "reconciled", f"no progress for {after_s:g}s; re-enqueued {what}",
                    actor="reconciler")
        log.warning("reconciler: move %s (%s) re-enqueued %s", move.id, move.state, what)
        actions.append({"move_id": str(move.id), "state": move.state, "step": move.step, "enqueued": what})
    return actions
