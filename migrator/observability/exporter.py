"""``migrator metrics serve``: gauges read from the control database at scrape time.

Moves by state, how long each running move has been in its step and how long it has been frozen,
per-cell capacity from the latest readings, and when the Topology Service's certificates expire.
One process serves them, so several workers never double-count a gauge.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from migrator.control.engine import control_engine
from migrator.control.models import ACTIVE_MOVE_STATES, TERMINAL_MOVE_STATES
from migrator.topology.certs import CertificateError, describe

log = logging.getLogger(__name__)


class ControlDatabaseCollector(Collector):
    def __init__(self, settings):
        self.settings = settings

    def collect(self):
        engine = control_engine(self.settings.control_dsn)
        up = GaugeMetricFamily("migrator_control_database_up", "1 if the control database answered the scrape")
        try:
            with engine.connect() as conn:
                by_state = dict(conn.execute(text("SELECT state, count(*) FROM moves GROUP BY state")).all())
                running = conn.execute(text(
                    "SELECT id::text, organization_id, step, source_cell, target_cell, "
                    "extract(epoch FROM now() - coalesce(step_started_at, updated_at)), "
                    "CASE WHEN unfrozen_at IS NULL AND NOT freeze_lifted "
                    "THEN extract(epoch FROM now() - frozen_at) END, "
                    "throttle->>'indicator', throttle->>'cell', throttle->>'signal', "
                    "CASE WHEN state = 'running' "
                    "THEN extract(epoch FROM now() - (throttle->>'since')::timestamptz) END "
                    "FROM moves WHERE state IN ('running', 'paused', 'failed')")).all()
                capacity = _capacity(conn, self.settings)
        except Exception as exc:  # noqa: BLE001 - a scrape must still answer
            log.warning("metrics: control database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        moves = GaugeMetricFamily("migrator_moves", "Moves by state", labels=["state"])
        for state in (*ACTIVE_MOVE_STATES, *TERMINAL_MOVE_STATES):
            moves.add_metric([state], by_state.get(state, 0))
        yield moves
        step = GaugeMetricFamily("migrator_move_step_seconds", "Seconds an unfinished move has spent in its step",
                                 labels=["move_id", "organization", "step", "source", "target"])
        frozen = GaugeMetricFamily("migrator_move_frozen_seconds",
                                   "Seconds an unfinished move has kept its organization read-only (its open write "
                                   "window: frozen, and not yet writable on the target or the source)",
                                   labels=["move_id", "organization", "source", "target"])
        throttled = GaugeMetricFamily("migrator_move_throttled_seconds",
                                      "Seconds a running move has been held back by a cell's health indicator "
                                      "(paused on stop, slowed on slow down)",
                                      labels=["move_id", "organization", "source", "target", "cell", "indicator",
                                              "signal"])
        for move_id, org, st, src, tgt, in_step, frozen_s, indicator, cell, signal, held_s in running:
            step.add_metric([move_id, str(org), st, src, tgt], float(in_step or 0))
            if frozen_s is not None:
                frozen.add_metric([move_id, str(org), src, tgt], float(frozen_s))
            if held_s is not None and indicator:
                throttled.add_metric([move_id, str(org), src, tgt, cell or "", indicator, signal or ""],
                                     float(held_s))
        yield step
        yield frozen
        yield throttled
        yield from capacity


CAPACITY_COLUMNS = {
    "bytes": "Bytes of the organizations routed to the cell (rows and blobs): what thresholds apply to",
    "database_bytes": "Size of the cell's database",
    "blob_bytes": "Bytes in the cell's blob store referenced by its organizations",
    "organizations": "Organizations routed to the cell",
    "reclaimable_bytes": "Bytes of source copies awaiting cleanup",
    "moves_in": "Active moves into the cell",
    "moves_out": "Active moves out of the cell",
}


def _capacity(conn, settings) -> list:
    """Per-cell gauges from the latest capacity readings (cell_readings, refreshed by celery beat),
    and each cell's thresholds from the config, so alert rules can compare the two."""
    if not conn.execute(text("SELECT to_regclass('cell_readings') IS NOT NULL")).scalar():
        return []
    cols = list(CAPACITY_COLUMNS)
    families = {c: GaugeMetricFamily(f"migrator_cell_{c}", doc, labels=["cell"]) for c, doc in CAPACITY_COLUMNS.items()}
    age = GaugeMetricFamily("migrator_cell_reading_age_seconds", "Age of the latest capacity reading", labels=["cell"])
    rows = conn.execute(text("SELECT cell, extract(epoch FROM now() - measured_at), " + ", ".join(cols)  # noqa: S608
                             + " FROM cell_readings")).all()
    for row in rows:
        age.add_metric([row[0]], float(row[1] or 0))
        for i, c in enumerate(cols, start=2):
            families[c].add_metric([row[0]], float(row[i] or 0))
    marks = {name: GaugeMetricFamily(f"migrator_cell_{name}", f"Configured {name.replace('_', ' ')} of the cell",
                                     labels=["cell"])
             for name in ("high_water_bytes", "low_water_bytes", "high_water_orgs", "low_water_orgs")}
    for cell in settings.cells:
        t = settings.rebalance.thresholds(cell)
        for name, family in marks.items():
            value = getattr(t, name)
            if value is not None:
                family.add_metric([cell], float(value))
    return [*families.values(), age, *marks.values()]


class CertificateCollector(Collector):
    """When each certificate of ``topology.tls`` in this config expires (the CA, the server's, this
    host's client certificate): the alert CertificateExpiresSoon pages two weeks ahead."""

    def __init__(self, settings):
        self.settings = settings

    def collect(self):

        gauge = GaugeMetricFamily("migrator_certificate_expiry_timestamp_seconds",
                                  "When a certificate of topology.tls stops being valid (Unix time)",
                                  labels=["which", "name", "role", "path"])
        tls = self.settings.topology.tls
        for which in ("ca", "server_cert", "client_cert"):
            value = getattr(tls, which, None) if tls else None
            if not value:
                continue
            path = self.settings.resolve_path(value)
            if not path.exists():
                continue  # e.g. the server's certificate, on a host that only runs clients
            try:
                info = describe(path)
            except CertificateError as exc:
                log.warning("metrics: %s", exc.message)
                continue
            gauge.add_metric([which, info["name"], info["role"] or "", str(path)], info["expires_at"])
        yield gauge


def serve(settings, port: int, addr: str = "127.0.0.1") -> None:

    REGISTRY.register(ControlDatabaseCollector(settings))
    REGISTRY.register(CertificateCollector(settings))
    start_http_server(port, addr=addr)
    log.warning("metrics exporter listening on %s:%d", addr, port)
    while True:
        time.sleep(3600)
