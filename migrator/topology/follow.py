"""Follow the route change stream: keep a table of every route current, forever, never going back.

:class:`RouteFollower` watches the Topology Service (``WatchRoutes`` over gRPC, or LISTEN/NOTIFY
in-process), reconnects with backoff when the stream ends, and starts each stream from a fresh
snapshot, so whatever happened while it was away is caught up at once. Per organization it keeps the
route of the highest revision it has seen: a change or a snapshot entry of a lower or equal revision
is ignored (``ignored`` counts them), so no replay, duplicate or late message can put an older route
over a newer one.

What it knows of its own freshness (:meth:`status`): whether the stream is connected, the head
revision the service last reported, the highest revision it applied, and since when it may be behind
(``behind_since``: while the stream is down, or while the head is ahead of what it applied).

The router (:mod:`migrator.router.sync`) and the applications' lookup (:mod:`migrator.topology.lookup`)
are followers with callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from migrator.dsn import redact
from migrator.errors import MigratorError
from migrator.topology.routes import Change, Heartbeat, RouteInfo, Snapshot

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class FollowerStatus:
    connected: bool
    synced: bool  # a snapshot arrived at least once
    head: int  # the newest revision the service reported
    applied: int  # the highest revision applied
    behind_since: float | None  # monotonic time since which it may be behind; None: current
    routes: int
    snapshots: int  # streams started (1 + reconnects that got through)
    ignored: int  # changes dropped for an older or equal revision
    last_error: str | None

    def lag_s(self, now: float | None = None) -> float:
        if self.behind_since is None:
            return 0.0
        return max((now if now is not None else time.monotonic()) - self.behind_since, 0.0)

    @property
    def lag_revisions(self) -> int:
        return max(self.head - self.applied, 0)


class RouteFollower:
    """Keeps ``routes`` (organization id -> :class:`RouteInfo`) current from ``topology.watch_routes``.

    ``topology``: a client (:class:`~migrator.topology.client.TopologyClient` or the in-process service)
    or a callable making one (called again after each failure). Callbacks run on the follower's thread:
    ``on_snapshot(routes, head)`` with the new table after each (re)connect, ``on_change(route, action,
    previous)`` for each newer route, ``on_heartbeat(head)``.
    """

    def __init__(self, topology, *, on_snapshot: Callable | None = None, on_change: Callable | None = None,
                 on_heartbeat: Callable | None = None, name: str = "route-follower"):
        self._topology = topology
        self._on_snapshot = on_snapshot
        self._on_change = on_change
        self._on_heartbeat = on_heartbeat
        self.name = name
        self.routes: dict[int, RouteInfo] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False
        self._head = 0
        self._applied = 0
        self._behind_since: float | None = time.monotonic()
        self._snapshots = 0
        self._ignored = 0
        self._last_error: str | None = None

    # -- lifecycle
    def start(self) -> RouteFollower:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Whether a snapshot arrived (waiting up to ``timeout`` seconds for one)."""
        return self._synced.wait(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def status(self) -> FollowerStatus:
        with self._lock:
            return FollowerStatus(self._connected, self._synced.is_set(), self._head, self._applied,
                                  self._behind_since, len(self.routes), self._snapshots, self._ignored,
                                  self._last_error)

    # -- the loop
    def run(self) -> None:
        """Follow until :meth:`stop`: watch, and after any failure wait (backoff) and watch again."""
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            client, owned = self._client()
            try:
                if client is not None:
                    for event in client.watch_routes(self._stop):
                        self._handle(event)
                        backoff = BACKOFF_MIN_S
            except MigratorError as exc:
                self._failed(f"{exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            except Exception as exc:  # noqa: BLE001 - a follower keeps following; the log has the traceback
                log.exception("%s: unexpected error while following routes", self.name)
                self._failed(f"{type(exc).__name__}: {exc}")
            finally:
                if owned and client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        with self._lock:
            self._connected = False

    def _client(self):
        if not callable(self._topology) or hasattr(self._topology, "watch_routes"):
            return self._topology, False
        try:
            return self._topology(), True
        except MigratorError as exc:
            self._failed(exc.message)
            return None, False

    def _failed(self, message: str) -> None:
        message = redact(message)
        with self._lock:
            was = self._connected
            self._connected = False
            self._last_error = message
            if self._behind_since is None:
                self._behind_since = time.monotonic()
        (log.warning if was else log.info)("%s: route stream down, resyncing when it is back: %s", self.name, message)

    def _handle(self, event) -> None:
        if isinstance(event, Snapshot):
            self._snapshot(event)
        elif isinstance(event, Change):
            self._change(event.route, event.action)
        elif isinstance(event, Heartbeat):
            with self._lock:
                self._head = max(self._head, event.head)
                self._update_behind()
            if self._on_heartbeat is not None:
                self._on_heartbeat(event.head)

    def _snapshot(self, snap: Snapshot) -> None:
        with self._lock:
            fresh: dict[int, RouteInfo] = {}
            current = self.routes
            for route in snap.routes:
                mine = current.get(route.organization_id)
                if mine is not None and route.revision and mine.revision > route.revision:
                    fresh[route.organization_id] = mine  # never back to an older route
                    self._ignored += 1
                else:
                    fresh[route.organization_id] = route
            self.routes = fresh
            self._connected = True
            self._last_error = None
            self._snapshots += 1
            self._head = max(self._head, snap.head)
            self._applied = max(self._applied, snap.head)
            self._update_behind()
        log.info("%s: %d routes at revision %d (stream %d)", self.name, len(fresh), snap.head, self._snapshots)
        if self._on_snapshot is not None:
            self._on_snapshot(fresh, snap.head)
        self._synced.set()

    def _change(self, route: RouteInfo, action: str) -> None:
        with self._lock:
            previous = self.routes.get(route.organization_id)
            newer = previous is None or not route.revision or previous.revision < route.revision
            if newer:
                self.routes[route.organization_id] = route
            else:
                self._ignored += 1
        if newer and self._on_change is not None:
            self._on_change(route, action, previous)
        with self._lock:
            self._applied = max(self._applied, route.revision)
            self._head = max(self._head, route.revision)
            self._update_behind()

    def offer(self, route: RouteInfo) -> RouteInfo:
        """Take a route read some other way (a Classify) unless a newer one is known; the one kept."""
        with self._lock:
            known = self.routes.get(route.organization_id)
            if known is None or (route.revision and known.revision < route.revision):
                self.routes[route.organization_id] = known = route
            return known

    def _update_behind(self) -> None:
        """Under the lock: current iff connected and nothing the head announced is missing."""
        if self._connected and self._applied >= self._head:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = time.monotonic()
