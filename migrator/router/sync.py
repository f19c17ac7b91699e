"""``migrator router sync``: every HAProxy of the router follows the Topology Service's routes.

A :class:`~migrator.topology.follow.RouteFollower` (a reader of ``WatchRoutes``) keeps the route
table; this module turns it into the two maps (:mod:`migrator.router.maps`) and applies them:

- **a snapshot** (at start and after every reconnect of the stream) replaces both maps of every
  HAProxy at once (``prepare``/``commit map``: a lookup sees the old map or the new one), frozen map
  first, so an organization frozen meanwhile refuses writes before it could be routed anywhere new;
- **a change** is applied to every HAProxy as it arrives: ``set map`` (or ``add``) of its cell, and
  its entry added to or deleted from the frozen map (added first when it freezes, deleted last when
  it unfreezes). The follower drops a change older than the route it has, so nothing older is ever
  applied over something newer;
- **the map files** are rewritten atomically after each snapshot or change (in a thread of their
  own, so propagation never waits for the disk), so an HAProxy (re)starting reads current maps;
- **verification**, every ``router.verify_every_s``: an HAProxy whose process changed (restart,
  reload) or whose maps differ from the routes (anyone's edit, a reload between a change and the
  file rewrite) gets both maps replaced again; one that does not answer is retried every half
  second and replaced in full when it is back.

Its freshness is exported per HAProxy (``migrator_router_sync_lag_seconds``: how long it may have
been behind the Topology Service, 0 when current; ``..._lag_revisions``: head revision minus the
revision applied there), see :class:`SyncCollector`; the ``RouterSyncLagging`` alert and the
runbook docs/runbooks/alert-router-sync-lagging.md read them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from migrator.errors import MigratorError
from migrator.router.admin import AdminSocket, ProcessIdentity
from migrator.router.maps import MapFiles, frozen_entries, orgs_entries, render, write_atomically
from migrator.topology.follow import RouteFollower
from migrator.topology.routes import RouteInfo

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often an HAProxy that needs a full sync is tried again


class Target:
    """One HAProxy (its admin socket) and what the sync knows of it."""

    def __init__(self, sock: AdminSocket):
        self.sock = sock
        self.applied = 0  # the highest revision applied to it
        self.needs_full = True  # its maps must be replaced whole before changes can be applied one by one
        self.behind_since: float | None = time.monotonic()  # None: it has everything the sync has
        self.identity: ProcessIdentity | None = None
        self.error: str | None = None
        self.last_verified = 0.0
        self.changes = 0
        self.errors = 0
        self.resyncs: Counter = Counter()  # reason -> full replacements

    @property
    def label(self) -> str:
        return self.sock.label


class RouterSync:
    """Follows the route stream into HAProxy admin sockets and map files (see the module docstring).

    ``open_topology``: makes a Topology Service client (a reader's certificate is enough).
    """

    def __init__(self, open_topology, files: MapFiles, sockets: list[AdminSocket], *, verify_every_s: float = 5.0,
                 write_files: bool = True):
        self.files = files
        self.targets = [Target(s) for s in sockets]
        self.verify_every_s = verify_every_s
        self.write_files = write_files
        self._lock = threading.RLock()  # the desired maps and every target
        self._orgs: dict[str, str] = {}
        self._frozen: dict[str, str] = {}
        self._revision = 0  # revision of the desired maps
        self._stop = threading.Event()
        self._files_dirty = threading.Event()
        self._files_done = threading.Condition()
        self.file_writes = 0
        self.file_errors = 0
        self.file_revision = 0
        self._threads: list[threading.Thread] = []
        self.follower = RouteFollower(open_topology, on_snapshot=self._on_snapshot, on_change=self._on_change,
                                      name="router-sync")

    @classmethod
    def from_settings(cls, settings, *, sockets: list[str] | None = None, write_files: bool = True) -> RouterSync:
        # deferred: the gRPC client is slow to import and only this path needs it
        from migrator.topology.client import topology_client

        base = Path(settings.config_path).parent if settings.config_path else None
        addresses = sockets if sockets is not None else settings.router.admin_sockets
        return cls(lambda: topology_client(settings), MapFiles.from_settings(settings),
                   [AdminSocket(a, base=base) for a in addresses], verify_every_s=settings.router.verify_every_s,
                   write_files=write_files)

    # -- lifecycle
    def start(self) -> RouterSync:
        for target, name in ((self._file_writer, "router-map-files"), (self._verifier, "router-verify")):
            if target == self._file_writer and not self.write_files:
                continue
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.follower.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.follower.stop()
        self._files_dirty.set()
        for thread in self._threads:
            thread.join(5)

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self.follower.wait_synced(timeout)

    # -- the follower's callbacks (its thread)
    def _on_snapshot(self, routes: dict[int, RouteInfo], head: int) -> None:
        values = routes.values()
        with self._lock:
            self._orgs, self._frozen = orgs_entries(values), frozen_entries(values)
            self._revision = max(self._revision, head)
            for target in self.targets:
                self._replace(target, "stream")
        self._files_dirty.set()

    def _on_change(self, route: RouteInfo, action: str, previous: RouteInfo | None) -> None:
        key = str(route.organization_id)
        with self._lock:
            self._orgs[key] = route.cell
            if route.frozen:
                self._frozen[key] = route.cell
            else:
                self._frozen.pop(key, None)
            self._revision = max(self._revision, route.revision)
            for target in self.targets:
                if target.needs_full:
                    self._replace(target, "unreachable")
                else:
                    self._apply(target, key, route)
        self._files_dirty.set()

    # -- applying (under the lock)
    def _apply(self, target: Target, key: str, route: RouteInfo) -> None:
        sock, files = target.sock, self.files
        try:
            if route.frozen:  # refuse writes before the organization could be routed anywhere new
                sock.set_entry(files.frozen, key, route.cell)
                sock.set_entry(files.orgs, key, route.cell)
            else:
                sock.set_entry(files.orgs, key, route.cell)
                sock.delete_entry(files.frozen, key)
        except MigratorError as exc:
            self._failed(target, exc)
            return
        target.changes += 1
        self._applied(target)

    def _replace(self, target: Target, reason: str) -> bool:
        sock, files = target.sock, self.files
        try:
            identity = sock.identity()
            sock.replace_map(files.frozen, self._frozen)
            sock.replace_map(files.orgs, self._orgs)
        except MigratorError as exc:
            self._failed(target, exc)
            return False
        target.identity = identity
        target.needs_full = False
        target.resyncs[reason] += 1
        target.last_verified = time.monotonic()
        if target.error is not None:
            log.info("router sync: HAProxy %s is back: both maps replaced (%d routes, %d frozen)", target.label,
                     len(self._orgs), len(self._frozen))
        else:
            log.info("router sync: HAProxy %s: both maps replaced (%s; %d routes, %d frozen)", target.label, reason,
                     len(self._orgs), len(self._frozen))
        self._applied(target)
        return True

    def _applied(self, target: Target) -> None:
        target.applied = self._revision
        target.error = None
        target.behind_since = None

    def _failed(self, target: Target, exc: MigratorError) -> None:
        target.errors += 1
        if target.error is None:
            log.warning("router sync: HAProxy %s: %s; its maps will be replaced in full when it answers",
                        target.label, exc.message)
        target.error = exc.message
        target.needs_full = True
        if target.behind_since is None:
            target.behind_since = time.monotonic()

    # -- background threads
    def _file_writer(self) -> None:
        while not self._stop.is_set():
            self._files_dirty.wait()
            if self._stop.is_set():
                return
            self._files_dirty.clear()
            with self._lock:
                orgs, frozen, revision = dict(self._orgs), dict(self._frozen), self._revision
            header = f"written by migrator router sync, route revision {revision}"
            try:
                write_atomically(self.files.frozen, render(frozen, header))
                write_atomically(self.files.orgs, render(orgs, header))
                self.file_writes += 1
                self.file_revision = revision
            except OSError as exc:
                self.file_errors += 1
                log.error("router sync: cannot write the map files in %s: %s", self.files.directory, exc)
                self._stop.wait(1.0)
                self._files_dirty.set()
            with self._files_done:
                self._files_done.notify_all()

    def wait_files(self, revision: int, timeout: float) -> bool:
        """Wait until the map files hold at least ``revision``."""
        deadline = time.monotonic() + timeout
        with self._files_done:
            while self.file_revision < revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._files_done.wait(left)
        return True

    def _verifier(self) -> None:
        while not self._stop.wait(TICK_S):
            if not self.follower.wait_synced(0):
                continue
            now = time.monotonic()
            for target in self.targets:
                if target.needs_full:
                    with self._lock:
                        self._replace(target, "unreachable")
                elif now - target.last_verified >= self.verify_every_s:
                    self.verify(target)

    def verify(self, target: Target) -> bool:
        """Compare one HAProxy's process and maps with the routes; replace its maps if they differ. True if
        they matched."""
        with self._lock:
            applied = target.applied
        try:
            identity = target.sock.identity()
            frozen = target.sock.show_map(self.files.frozen)
            orgs = target.sock.show_map(self.files.orgs)
        except MigratorError as exc:
            with self._lock:
                self._failed(target, exc)
            return False
        with self._lock:
            target.last_verified = time.monotonic()
            if target.applied != applied or target.needs_full:
                return True  # a change went in meanwhile: compare at the next round
            if not identity.same_process(target.identity):
                log.warning("router sync: HAProxy %s restarted (pid %s); replacing its maps", target.label,
                            identity.pid)
                self._replace(target, "restart")
                return False
            if orgs != self._orgs or frozen != self._frozen:
                diff = _describe_diff(self._orgs, orgs, self._frozen, frozen)
                log.warning("router sync: HAProxy %s differed from the routes (%s); replacing its maps", target.label,
                            diff)
                self._replace(target, "drift")
                return False
        return True

    # -- one-shot
    def sync_once(self, timeout: float = 30.0) -> dict:
        """Read every route once, apply them to every HAProxy that answers and write the files; a report."""
        self.follower.start()
        try:
            if not self.follower.wait_synced(timeout):
                status = self.follower.status()
                raise MigratorError(f"no route snapshot from the Topology Service within {timeout:.0f} s"
                                    + (f": {status.last_error}" if status.last_error else ""),
                                    "check topology.address and the reader's certificate (topology.tls)")
        finally:
            self.follower.stop()
        with self._lock:
            orgs, frozen, revision = dict(self._orgs), dict(self._frozen), self._revision
        if self.write_files:
            header = f"written by migrator router sync --once, route revision {revision}"
            write_atomically(self.files.frozen, render(frozen, header))
            write_atomically(self.files.orgs, render(orgs, header))
        return {"revision": revision, "routes": len(orgs), "frozen": len(frozen),
                "files": [str(self.files.orgs), str(self.files.frozen)] if self.write_files else [],
                "haproxy": {t.label: ("current" if not t.needs_full else f"not updated: {t.error}")
                            for t in self.targets}}

    # -- what the metrics and `router status` show
    def snapshot_status(self) -> dict:
        status = self.follower.status()
        now = time.monotonic()
        with self._lock:
            targets = {}
            for t in self.targets:
                behind = [x for x in (t.behind_since, status.behind_since) if x is not None]
                targets[t.label] = {
                    "applied_revision": t.applied, "lag_revisions": max(status.head - t.applied, 0),
                    "lag_s": round(max((now - min(behind)) if behind else 0.0, 0.0), 3),
                    "current": not behind and t.applied >= status.head, "error": t.error,
                    "changes": t.changes, "errors": t.errors, "resyncs": dict(t.resyncs),
                    "pid": t.identity.pid if t.identity else None,
                }
            return {"stream_connected": status.connected, "synced": status.synced, "head_revision": status.head,
                    "revision": self._revision, "routes": len(self._orgs), "frozen": len(self._frozen),
                    "stream_snapshots": status.snapshots, "ignored_changes": status.ignored,
                    "stream_error": status.last_error, "file_revision": self.file_revision,
                    "file_writes": self.file_writes, "file_errors": self.file_errors, "haproxy": targets}


def _describe_diff(want_orgs, have_orgs, want_frozen, have_frozen) -> str:
    parts = []
    for what, want, have in (("orgs.map", want_orgs, have_orgs), ("frozen.map", want_frozen, have_frozen)):
        missing = sum(1 for k in want if k not in have)
        extra = sum(1 for k in have if k not in want)
        wrong = sum(1 for k, v in want.items() if k in have and have[k] != v)
        if missing or extra or wrong:
            parts.append(f"{what}: {missing} missing, {extra} extra, {wrong} different")
    return "; ".join(parts) or "no difference"


class SyncCollector:
    """Prometheus metrics of a :class:`RouterSync`, read from its state at each scrape."""

    def __init__(self, sync: RouterSync):
        self.sync = sync

    def collect(self):

        s = self.sync.snapshot_status()
        yield GaugeMetricFamily("migrator_router_stream_connected", "1 while the route stream from the Topology "
                                "Service is up", value=int(s["stream_connected"]))
        yield GaugeMetricFamily("migrator_router_head_revision",
                                "Newest route revision the Topology Service reported", value=s["head_revision"])
        yield GaugeMetricFamily("migrator_router_routes", "Routes in the router's maps", value=s["routes"])
        yield GaugeMetricFamily("migrator_router_frozen_routes", "Organizations whose writes the router refuses",
                                value=s["frozen"])
        yield CounterMetricFamily("migrator_router_stream_snapshots", "Route streams started (each begins with a "
                                  "full snapshot: the start and every resync)", value=s["stream_snapshots"])
        yield CounterMetricFamily("migrator_router_ignored_changes", "Changes dropped because a route of the same "
                                  "or a higher revision was already applied", value=s["ignored_changes"])
        yield CounterMetricFamily("migrator_router_map_file_writes", "Rewrites of the map files",
                                  value=s["file_writes"])
        yield CounterMetricFamily("migrator_router_map_file_errors", "Failed rewrites of the map files",
                                  value=s["file_errors"])
        applied = GaugeMetricFamily("migrator_router_applied_revision", "Newest route revision applied to an "
                                    "HAProxy", labels=["haproxy"])
        lag_rev = GaugeMetricFamily("migrator_router_sync_lag_revisions", "Head revision minus the revision "
                                    "applied to an HAProxy", labels=["haproxy"])
        lag_s = GaugeMetricFamily("migrator_router_sync_lag_seconds", "How long an HAProxy may have been behind "
                                  "the Topology Service (0: current)", labels=["haproxy"])
        up = GaugeMetricFamily("migrator_router_haproxy_up", "1 while an HAProxy's admin socket takes changes",
                               labels=["haproxy"])
        changes = CounterMetricFamily("migrator_router_changes", "Route changes applied to an HAProxy",
                                      labels=["haproxy"])
        errors = CounterMetricFamily("migrator_router_apply_errors", "Commands an HAProxy did not take",
                                     labels=["haproxy"])
        resyncs = CounterMetricFamily("migrator_router_resyncs", "Full replacements of an HAProxy's maps, by "
                                      "reason (stream, unreachable, restart, drift)", labels=["haproxy", "reason"])
        for label, t in s["haproxy"].items():
            applied.add_metric([label], t["applied_revision"])
            lag_rev.add_metric([label], t["lag_revisions"])
            lag_s.add_metric([label], t["lag_s"])
            up.add_metric([label], int(t["error"] is None))
            changes.add_metric([label], t["changes"])
            errors.add_metric([label], t["errors"])
            for reason in ("stream", "unreachable", "restart", "drift"):
                resyncs.add_metric([label, reason], t["resyncs"].get(reason, 0))
        yield from (applied, lag_rev, lag_s, up, changes, errors, resyncs)


def serve_metrics(sync: RouterSync, addr: str, port: int):
    """Serve the sync's metrics (and nothing else) on ``addr:port``."""

    registry = CollectorRegistry(auto_describe=True)
    registry.register(SyncCollector(sync))
    return start_http_server(port, addr=addr, registry=registry)
