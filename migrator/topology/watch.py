"""The route change stream: the whole route map, then every change as it commits (``WatchRoutes``).

One :class:`RouteWatchHub` per process holds one LISTEN connection on the control database's route
channel (the service sends ``pg_notify`` in the transaction of every route change, delivered in
commit order) and fans each change out to every watcher. A watcher is registered *before* it reads
the snapshot, so each change is in the snapshot, in the watcher's queue, or both (a change seen twice
has a revision no higher than the snapshot's route and is dropped): nothing falls between.

A heartbeat carrying the head revision (the newest route_history id) goes to every watcher each
``heartbeat_s``; followers measure their lag against it and notice a silent stream.

When the LISTEN connection breaks, notifications may have been lost: every watcher's stream ends
(its follower reconnects and starts from a fresh snapshot). A watcher that falls more than
``max_queue`` changes behind is ended the same way, so one slow router cannot grow the server's memory.

Events (also what :meth:`TopologyClient.watch_routes` yields)::

    Snapshot(routes, head, heartbeat_s)   first, once per stream
    Change(route, action)                 one per route change
    Heartbeat(head)                       when nothing changed for heartbeat_s
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator

import psycopg
from psycopg import sql

from migrator.dsn import mask_dsn
from migrator.errors import CellUnavailable, MigratorError, TooManyWatchers, WatchEnded
from migrator.topology.notify import parse_change
from migrator.topology.routes import Change, Heartbeat, RouteInfo, Snapshot

__all__ = ["Change", "Heartbeat", "RouteWatchHub", "Snapshot", "TooManyWatchers", "WatchEnded"]

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 1.0
DEFAULT_MAX_QUEUE = 10_000
CONNECT_TIMEOUT_S = 10.0


class _Watcher:
    def __init__(self, max_queue: int):
        self.items: collections.deque = collections.deque()
        self.max_queue = max_queue
        self.ended: str | None = None
        self.cond = threading.Condition()

    def put(self, item) -> None:
        with self.cond:
            if self.ended:
                return
            if len(self.items) >= self.max_queue:
                self.end(f"the watcher fell more than {self.max_queue} changes behind")
                return
            self.items.append(item)
            self.cond.notify()

    def end(self, reason: str) -> None:
        with self.cond:
            if not self.ended:
                self.ended = reason
                self.items.clear()
            self.cond.notify_all()


class RouteWatchHub:
    """One LISTEN connection and its heartbeat, shared by every watcher of a process.

    ``service``: a :class:`~migrator.topology.service.TopologyService` (snapshots, the head revision).
    The hub starts on the first :meth:`watch` (or :meth:`start`); :meth:`close` ends every stream.
    """

    def __init__(self, service, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S, max_queue: int = DEFAULT_MAX_QUEUE,
                 max_watchers: int | None = None):
        self.service = service
        self.heartbeat_s = heartbeat_s
        self.max_queue = max_queue
        self.max_watchers = max_watchers
        self._watchers: set[_Watcher] = set()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    # -- lifecycle
    def start(self) -> RouteWatchHub:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="route-watch-hub", daemon=True)
                self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._end_all("the Topology Service is stopping")
        if self._thread is not None:
            self._thread.join(5)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def _end_all(self, reason: str) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for w in watchers:
            w.end(reason)

    def _broadcast(self, item) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for w in watchers:
            w.put(item)

    def _run(self) -> None:
        dsn, channel = self.service.control_dsn, self.service.notify_channel
        backoff = 0.2
        while not self._closed.is_set():
            conn = None
            try:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                       application_name="migrator-route-watch")
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self._error = None
                self._connected.set()
                log.info("route watch: listening on %s in %s", channel, mask_dsn(dsn))
                backoff = 0.2
                self._listen(conn)
            except psycopg.Error as exc:
                self._error = mask_dsn(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                log.warning("route watch: notifications interrupted (%s); every stream ends and resyncs", self._error)
            finally:
                self._connected.clear()
                self._end_all("route notifications were interrupted; resync")
                if conn is not None:
                    conn.close()
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _listen(self, conn: psycopg.Connection) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._closed.is_set():
            wait = max(next_beat - time.monotonic(), 0.0)
            for note in conn.notifies(timeout=wait):
                change = parse_change(note.payload)
                if change is not None:
                    self._broadcast(change)
                if time.monotonic() >= next_beat:
                    break
            if time.monotonic() >= next_beat:
                if self._watchers:
                    try:
                        self._broadcast(Heartbeat(self.service.head_revision()))
                    except MigratorError as exc:
                        raise psycopg.OperationalError(exc.message) from None
                next_beat = time.monotonic() + self.heartbeat_s

    # -- watching
    def watch(self, stop: threading.Event | None = None, *, ready_timeout: float = CONNECT_TIMEOUT_S,
              snapshot_chunk: int | None = None) -> Iterator[Snapshot | Change | Heartbeat]:
        """The stream: a snapshot, then changes and heartbeats, until ``stop`` is set (then it returns)
        or the hub ends it (then it raises :class:`WatchEnded`)."""
        if self._closed.is_set():
            raise WatchEnded("route stream refused: the Topology Service is stopping", "watch again")
        self.start()
        if not self._connected.wait(ready_timeout):
            raise CellUnavailable("the Topology Service cannot follow route changes: the control database "
                                  f"does not answer ({self._error or 'not connected yet'})",
                                  "check control_dsn and that PostgreSQL is running; retry")
        watcher = _Watcher(self.max_queue)
        with self._lock:
            if self.max_watchers is not None and len(self._watchers) >= self.max_watchers:
                raise TooManyWatchers(f"the Topology Service already streams routes to {len(self._watchers)} "
                                      "watchers (topology.max_watchers)",
                                      "raise topology.max_watchers, or share one follower per host")
            self._watchers.add(watcher)
        try:
            routes, head = self.service.snapshot()
            seen = {r.organization_id: r.revision for r in routes}
            yield Snapshot(routes, head, self.heartbeat_s)
            while True:
                with watcher.cond:
                    while not watcher.items and not watcher.ended and not (stop is not None and stop.is_set()):
                        watcher.cond.wait(0.25)
                    if watcher.ended:
                        raise WatchEnded(f"route stream ended: {watcher.ended}", "watch again (a new stream "
                                         "starts with a fresh snapshot)")
                    if stop is not None and stop.is_set():
                        return
                    item = watcher.items.popleft()
                if isinstance(item, Heartbeat):
                    yield item
                    continue
                known = seen.get(item.organization_id)
                if known is not None:
                    if item.revision and item.revision <= known:
                        continue  # already in the snapshot
                    del seen[item.organization_id]
                yield Change(RouteInfo(item.organization_id, item.cell, item.version, item.state, item.token_digest,
                                       item.revision), item.action)
        finally:
            with self._lock:
                self._watchers.discard(watcher)
