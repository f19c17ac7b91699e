"""``migrator metrics serve``: gauges read from the control database at scrape time.

Moves by state, how long each running move has been in its step and how long it has been frozen,
and per-cell capacity from the latest readings. One process serves them, so several workers never
double-count a gauge.
"""

from __future__ import annotations

import logging
import time

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from migrator.control.engine import control_engine
from migrator.moves import workflow as wf

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
                    "extract(epoch FROM now() - frozen_at) "
                    "FROM moves WHERE state IN ('running', 'paused', 'failed')")).all()
                capacity = _capacity(conn)
        except Exception as exc:  # noqa: BLE001 - a scrape must still answer
            log.warning("metrics: control database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        moves = GaugeMetricFamily("migrator_moves", "Moves by state", labels=["state"])
        for state in (*wf.ACTIVE_STATES, *wf.TERMINAL_STATES):
            moves.add_metric([state], by_state.get(state, 0))
        yield moves
        step = GaugeMetricFamily("migrator_move_step_seconds", "Seconds an unfinished move has spent in its step",
                                 labels=["move_id", "organization", "step", "source", "target"])
        frozen = GaugeMetricFamily("migrator_move_frozen_seconds",
                                   "Seconds an unfinished move has kept its organization read-only",
                                   labels=["move_id", "organization", "source", "target"])
        for move_id, org, st, src, tgt, in_step, frozen_s in running:
            step.add_metric([move_id, str(org), st, src, tgt], float(in_step or 0))
            if frozen_s is not None:
                frozen.add_metric([move_id, str(org), src, tgt], float(frozen_s))
        yield step
        yield frozen
        yield from capacity


def _capacity(conn) -> list:
    """Per-cell capacity gauges from the latest readings (when the rebalancer's table exists)."""
    exists = conn.execute(text("SELECT to_regclass('capacity_readings') IS NOT NULL")).scalar()
    if not exists:
        return []
    cols = {r[0] for r in conn.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'capacity_readings'"))}
    wanted = [c for c in ("database_bytes", "blob_bytes", "organization_count") if c in cols]
    if "cell" not in cols or not wanted:
        return []
    order = "taken_at" if "taken_at" in cols else ("created_at" if "created_at" in cols else None)
    query = "SELECT DISTINCT ON (cell) cell, " + ", ".join(wanted) + " FROM capacity_readings"  # noqa: S608
    query += f" ORDER BY cell, {order} DESC" if order else ""
    families = {c: GaugeMetricFamily(f"migrator_cell_{c}", f"Latest capacity reading: {c}", labels=["cell"])
                for c in wanted}
    for row in conn.execute(text(query)).all():
        for i, c in enumerate(wanted, start=1):
            families[c].add_metric([row[0]], float(row[i] or 0))
    return list(families.values())


def serve(settings, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a metrics endpoint listens wide
    from prometheus_client import REGISTRY, start_http_server

    REGISTRY.register(ControlDatabaseCollector(settings))
    start_http_server(port, addr=addr)
    log.warning("metrics exporter listening on %s:%d", addr, port)
    while True:
        time.sleep(3600)
