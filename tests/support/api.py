"""Helpers for API and rebalancer tests: config sections, Alertmanager payloads, a live `migrator api serve`."""

from __future__ import annotations

import datetime as dt

import httpx
import yaml

from migrator.fleet.processes import BIN, Process, free_port, wait_for
from migrator.fleet.services import child_env

TOKEN = "test-token-0123456789abcdef"


def configure(fleet, **sections) -> None:
    """Merge sections into the fleet's config file (before any process reads it)."""
    from migrator.config import clear_settings_cache
    from migrator.fleet.config import merge, write_config

    write_config(fleet.config_path, merge(yaml.safe_load(fleet.config_path.read_text()), sections))
    clear_settings_cache()


def alertmanager_payload(cell: str, *, status: str = "firing", fingerprint: str = "a1b2c3d4e5f60718",
                         starts_at: str = "2026-11-28T10:00:00Z", alertname: str = "CellCapacityHigh") -> dict:
    """A webhook body as Alertmanager 0.25 sends it (version 4)."""
    labels = {"alertname": alertname, "cell": cell, "severity": "warning"}
    ends = "0001-01-01T00:00:00Z" if status == "firing" else dt.datetime.now(dt.UTC).isoformat()
    return {
        "receiver": "cells-migrator", "status": status, "version": "4", "truncatedAlerts": 0,
        "groupKey": '{}/{alertname="CellCapacityHigh"}:{cell="' + cell + '"}',
        "groupLabels": {"alertname": alertname, "cell": cell}, "commonLabels": labels,
        "commonAnnotations": {"summary": f"{cell} is above its high-water mark"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": status, "labels": labels,
                    "annotations": {"summary": f"{cell} is above its high-water mark"},
                    "startsAt": starts_at, "endsAt": ends,
                    "generatorURL": "http://prometheus:9090/graph?g0.expr=...", "fingerprint": fingerprint}],
    }


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def start_api(fleet, log_path) -> tuple[Process, str]:
    """`migrator api serve` as a real process on a free loopback port; returns (process, base URL)."""
    from migrator.fleet.config import role_env
    from tests.support.fleet import fleet_certs

    port = free_port()
    proc = Process([str(BIN / "migrator"), "api", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning"], child_env(fleet.config_path, role_env(fleet_certs(), "mover")),
                   log_path).start()
    url = f"http://127.0.0.1:{port}"

    def up():
        if not proc.alive():
            raise RuntimeError(f"api server exited:\n{proc.log()[-3000:]}")
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200

    wait_for(up, timeout=30, what="migrator api serve")
    return proc, url
