"""RouterSync against a real HAProxy, fed by a scripted route stream (no database): what reaches HAProxy,
what is never applied, and how it recovers from HAProxy restarting, going away, or being edited by hand."""

from __future__ import annotations

import queue

import pytest
import yaml

from migrator.config import load_settings
from migrator.fleet.processes import Process, free_port, wait_for
from migrator.router.admin import AdminSocket
from migrator.router.haproxy_config import write
from migrator.router.maps import MapFiles, read_map_file
from migrator.router.sync import RouterSync, SyncCollector
from migrator.topology.routes import Change, RouteInfo, Snapshot
from tests.support.edge import haproxy_binary, http_get

pytestmark = pytest.mark.timeout(120)


class QueueTopology:
    """One stream: a snapshot, then whatever the test puts in ``events``."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        self.events: queue.Queue = queue.Queue()

    def watch_routes(self, stop):
        yield self.snapshot
        while not stop.is_set():
            try:
                yield self.events.get(timeout=0.1)
            except queue.Empty:
                continue

    def close(self):
        pass


def route(org, cell, revision, state="active"):
    return RouteInfo(org, cell, 1, state, None, revision)


@pytest.fixture
def haproxy(tmp_path):
    exe, reason = haproxy_binary()
    if exe is None:
        pytest.skip(f"haproxy is not available ({reason})")
    port = free_port()
    config = {"control_dsn": "postgresql://127.0.0.1/unused",
              "cells": {c: {"dsn": "postgresql://127.0.0.1/unused", "app_servers": [f"127.0.0.1:{free_port()}"]}
                        for c in ("cell-1", "cell-2")},
              "router": {"listen": f"127.0.0.1:{port}", "map_dir": "maps", "admin_sockets": ["admin.sock"],
                         "haproxy_config": "haproxy.cfg"}}
    (tmp_path / "migrator.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(tmp_path / "migrator.yaml")
    write(settings)

    class HAProxy:
        def __init__(self):
            self.settings, self.port, self.proc = settings, port, None

        def start(self):
            args = [exe, "-db", "-f", str(tmp_path / "haproxy.cfg")]
            self.proc = Process(args, {}, tmp_path / "haproxy.log", name="haproxy").start()
            wait_for(lambda: http_get(port, "/_migrator/healthz")[0] == 200, timeout=20, what="haproxy")

        def stop(self):
            self.proc.stop()

        def route(self, org):
            status, _, body = http_get(port, "/_migrator/route", {"X-Organization-Id": str(org)})
            return tuple(body.split()) if status == 200 else None

    h = HAProxy()
    h.start()
    yield h
    h.stop()


def _sync(settings, topology) -> RouterSync:
    sync = RouterSync(lambda: topology, MapFiles.from_settings(settings),
                      [AdminSocket(str(settings.resolve_path("admin.sock")))], verify_every_s=3600).start()
    assert sync.wait_synced(10)
    return sync


def _metrics(sync) -> dict:
    return {(s.name, tuple(s.labels.items())): s.value for m in SyncCollector(sync).collect() for s in m.samples}


def test_changes_reach_haproxy_in_order_and_an_older_one_never_does(haproxy):
    topology = QueueTopology(Snapshot([route(1, "cell-1", 1), route(2, "cell-1", 2)], head=2, heartbeat_s=1))
    sync = _sync(haproxy.settings, topology)
    try:
        assert haproxy.route(1) == ("cell-1", "active") and haproxy.route(3) is None
        topology.events.put(Change(route(1, "cell-1", 3, "frozen"), "freeze"))
        wait_for(lambda: haproxy.route(1) == ("cell-1", "frozen"), timeout=10, interval=0.01, what="the freeze")
        # Writes to a frozen organization are answered by HAProxy itself; reads pass (to a backend that is down).
        from tests.support.edge import http_send
        status, headers, _ = http_send(haproxy.port, "POST", "/orgs/1/notes", {"note": "x"}, {"X-Organization-Id": "1"})
        assert status == 503 and headers["retry-after"] == "1"
        topology.events.put(Change(route(1, "cell-2", 4, "frozen"), "flip"))
        topology.events.put(Change(route(1, "cell-1", 3, "frozen"), "freeze"))  # a late replay: older, ignored
        topology.events.put(Change(route(1, "cell-2", 5), "unfreeze"))
        topology.events.put(Change(route(3, "cell-2", 6), "register"))
        wait_for(lambda: haproxy.route(3) == ("cell-2", "active"), timeout=10, interval=0.01, what="the new route")
        assert haproxy.route(1) == ("cell-2", "active")
        assert sync.wait_files(6, timeout=10)
        files = MapFiles.from_settings(haproxy.settings)
        assert read_map_file(files.orgs) == {"1": "cell-2", "2": "cell-1", "3": "cell-2"}
        assert read_map_file(files.frozen) == {}
        m = _metrics(sync)
        sock = str(haproxy.settings.resolve_path("admin.sock"))
        assert m[("migrator_router_applied_revision", (("haproxy", sock),))] == 6
        assert m[("migrator_router_sync_lag_seconds", (("haproxy", sock),))] == 0
        assert m[("migrator_router_ignored_changes_total", ())] == 1
        assert m[("migrator_router_changes_total", (("haproxy", sock),))] == 4  # the replay never reached it
    finally:
        sync.stop()


def test_haproxy_down_restarted_or_edited_is_brought_back_in_full(haproxy):
    topology = QueueTopology(Snapshot([route(1, "cell-1", 1)], head=1, heartbeat_s=1))
    sync = _sync(haproxy.settings, topology)
    target = sync.targets[0]
    try:
        # Down while a change arrives: the change waits for it, the files carry it meanwhile.
        haproxy.stop()
        topology.events.put(Change(route(1, "cell-2", 2), "flip"))
        wait_for(lambda: target.needs_full, timeout=10, interval=0.01, what="the failed apply")
        assert sync.snapshot_status()["haproxy"][target.label]["lag_s"] > 0
        assert sync.wait_files(2, timeout=10)
        haproxy.start()  # reads the current files, and the sync replaces both maps as soon as it answers
        wait_for(lambda: not target.needs_full, timeout=10, what="the sync to reach HAProxy again")
        assert haproxy.route(1) == ("cell-2", "active") and target.resyncs["unreachable"] >= 1
        assert sync.snapshot_status()["haproxy"][target.label]["lag_s"] == 0

        # Someone edits the map by hand: the next verification puts it back.
        AdminSocket(target.label).set_entry(sync.files.orgs, "1", "cell-1")
        assert haproxy.route(1) == ("cell-1", "active")
        assert not sync.verify(target)
        assert haproxy.route(1) == ("cell-2", "active") and target.resyncs["drift"] == 1

        # A restart between a change and the file rewrite would start it with an old map: the new process is seen.
        haproxy.stop()
        haproxy.start()
        assert not sync.verify(target) and target.resyncs["restart"] == 1
        assert sync.verify(target)
    finally:
        sync.stop()
