"""Route change notifications (PostgreSQL LISTEN/NOTIFY) and a router cache that follows them.

The Topology Service sends ``pg_notify(channel, json)`` in the transaction of every route change,
so a listener hears of a change the moment it commits::

    with subscribe(dsn, timeout=30) as changes:   # LISTEN is active once subscribe returns
        for change in changes:
            ...
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from migrator.dsn import mask_dsn
from migrator.errors import CellUnavailable
from migrator.topology.routes import RouteInfo

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a waiting subscription checks whether it was stopped


@dataclass(frozen=True)
class RouteChange:
    organization_id: int
    cell: str
    version: int
    state: str
    action: str  # register | freeze | refence | flip | unfreeze | repair
    revision: int = 0  # route_history id of this change (0 from a server older than revisions)
    token_digest: str | None = None  # digest of the token holding a freeze (never the token)


class Subscription:
    """An iterator of :class:`RouteChange` on one LISTENing connection; ``stop()`` ends it."""

    def __init__(self, control_dsn: str, channel: str, timeout: float | None,
                 stopped: threading.Event | None = None):
        self.channel = channel
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._stopped = stopped or threading.Event()
        try:
            self._conn = psycopg.connect(control_dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise CellUnavailable(f"control database {mask_dsn(control_dsn)} does not answer: "
                                  f"{mask_dsn(str(exc).strip().splitlines()[0])}",
                                  "check control_dsn in the config and that PostgreSQL is running") from None
        self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._changes = self._receive()

    def _receive(self) -> Iterator[RouteChange]:
        try:
            while not self._stopped.is_set():
                wait = POLL_S
                if self._deadline is not None:
                    wait = min(wait, self._deadline - time.monotonic())
                    if wait <= 0:
                        return
                for note in self._conn.notifies(timeout=wait):
                    change = parse_change(note.payload)
                    if change is not None:
                        yield change
                    if self._stopped.is_set():
                        return
        finally:
            self._conn.close()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> RouteChange:
        return next(self._changes)

    def stop(self) -> None:
        """End the iteration (from any thread) within ``POLL_S``; the connection closes with it."""
        self._stopped.set()

    def close(self) -> None:
        """Close the connection (from the iterating thread; other threads use ``stop()``)."""
        try:
            self._changes.close()
        except ValueError:  # being iterated in another thread, which closes the connection itself
            self.stop()
            return
        self._conn.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_change(payload: str) -> RouteChange | None:
    try:
        data = json.loads(payload)
        return RouteChange(int(data["organization_id"]), data["cell"], int(data["version"]), data["state"],
                           data["action"], int(data.get("revision") or 0), data.get("token_digest"))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed route notification: %.200s", payload)
        return None


def subscribe(control_dsn: str, channel: str = "topology_routes", timeout: float | None = None) -> Subscription:
    """LISTEN on ``channel``; iterate the changes until ``timeout`` seconds pass (None: forever)."""
    return Subscription(control_dsn, channel, timeout)


class RouteCache:
    """A router's cache of organization -> route, dropped per organization on each notification.

    ``lookup`` is the authority (``TopologyService.classify`` or ``TopologyClient.classify``). A
    lookup that raced a notification is not cached, so the cache never keeps a superseded route.
    """

    def __init__(self, lookup: Callable[[int], RouteInfo]):
        self._lookup = lookup
        self._routes: dict[int, RouteInfo] = {}
        self._generation: dict[int, int] = {}  # per organization, bumped on each invalidation
        self._epoch = 0  # bumped when everything is dropped
        self._lock = threading.Lock()

    def _stamp(self, organization_id: int) -> tuple[int, int]:
        return self._epoch, self._generation.get(organization_id, 0)

    def get(self, organization_id: int) -> RouteInfo:
        with self._lock:
            cached = self._routes.get(organization_id)
            stamp = self._stamp(organization_id)
        if cached is not None:
            return cached
        route = self._lookup(organization_id)
        with self._lock:
            if self._stamp(organization_id) == stamp:
                self._routes[organization_id] = route
        return route

    def invalidate(self, organization_id: int | None = None) -> None:
        """Forget one organization's route, or every route (``None``)."""
        with self._lock:
            if organization_id is None:
                self._routes.clear()
                self._epoch += 1
            else:
                self._routes.pop(organization_id, None)
                self._generation[organization_id] = self._generation.get(organization_id, 0) + 1

    def apply(self, change: RouteChange) -> None:
        self.invalidate(change.organization_id)

    def __len__(self) -> int:
        return len(self._routes)

    def follow(self, control_dsn: str, channel: str = "topology_routes") -> tuple[threading.Thread, threading.Event]:
        """Apply notifications in a daemon thread until the returned event is set.

        Whenever it (re)starts listening the whole cache is dropped: changes made while nobody
        listened were not heard.
        """
        stop = threading.Event()
        ready = threading.Event()

        def run() -> None:
            while not stop.is_set():
                try:
                    with Subscription(control_dsn, channel, None, stopped=stop) as changes:
                        self.invalidate()
                        ready.set()
                        for change in changes:
                            self.apply(change)
                except (psycopg.Error, CellUnavailable) as exc:
                    log.warning("route notifications interrupted, cache dropped: %s", mask_dsn(str(exc)))
                    self.invalidate()
                    stop.wait(1.0)

        thread = threading.Thread(target=run, name="route-cache", daemon=True)
        thread.start()
        ready.wait(15)
        return thread, stop
