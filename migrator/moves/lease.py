"""Keeping a lease alive from a thread while a step or unit works inside the write window.

Outside the window a lease is long (``moves.lease_ttl_s``) and renewed by the work's own
checkpoints. Inside it (freeze … flip) every second of a crashed worker is a second of refused
writes, so the lease is short (``moves.window_lease_ttl_s``) and :class:`LeaseKeeper` renews it
three times per TTL, whatever the work is doing. When the worker dies the renewals stop with it, the
lease lapses within the TTL, and the reconciler's window pass hands the step to another worker
(docs/adr/0012-the-write-window.md).
"""

from __future__ import annotations

import logging
import threading

from migrator.errors import InvalidMoveState, StaleToken

log = logging.getLogger(__name__)


class LeaseKeeper:
    """``with LeaseKeeper(store, move_id, token, owner, ttl_s, step=…, unit=…):`` renews the lease of the
    step (``unit=None``) or of one unit until the block ends, or until the move stops or the lease is
    lost (a newer attempt, another owner): then it stops quietly and the work's next fenced write
    finds out."""

    def __init__(self, store, move_id, token: str, owner: str, ttl_s: float, *, step: str, unit: str | None = None):
        self.store, self.move_id, self.token, self.owner = store, move_id, token, owner
        self.ttl_s, self.step, self.unit = ttl_s, step, unit
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{step}", daemon=True)

    def renew(self) -> bool:
        """One renewal; False when the lease is gone for good."""
        try:
            if self.unit is None:
                renewed = self.store.renew_step_lease(self.move_id, self.token, self.owner, self.ttl_s)
            else:
                renewed = self.store.extend_unit_lease(self.move_id, self.step, self.unit, self.token, self.owner,
                                                       self.ttl_s)
            if not renewed:
                return False
        except (StaleToken, InvalidMoveState):
            return False
        except Exception as exc:  # noqa: BLE001 - the control database may blink; the next tick tries again
            log.warning("move %s: could not renew the lease of %s: %s", self.move_id, self.unit or self.step, exc)
            return True
        self.renewals += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self.renew():
                return

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.ttl_s)
