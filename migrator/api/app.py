"""The FastAPI application: wiring, authentication on every route but /healthz, health checks."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import text

from migrator import __version__
from migrator.api import errors, moves, rebalance
from migrator.api.auth import accepted_tokens, require_token
from migrator.api.gate import RequestGate
from migrator.api.schemas import HealthOut, responses
from migrator.config import Settings, get_settings
from migrator.control.engine import control_engine
from migrator.db import first_line
from migrator.errors import ConfigError
from migrator.moves.dispatch import Dispatcher
from migrator.moves.operations import Operations
from migrator.rebalance.service import Rebalancer

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 3.0


class Services:
    """What the routes use, created on first use and shared by the API's threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._ops = None
        self._rebalancer = None
        self._dispatcher = None

    @property
    def dispatcher(self):
        with self._lock:
            if self._dispatcher is None:

                self._dispatcher = Dispatcher(self.settings)
            return self._dispatcher

    @property
    def ops(self):
        dispatcher = self.dispatcher
        with self._lock:
            if self._ops is None:

                self._ops = Operations(self.settings, dispatcher=dispatcher)
            return self._ops

    @property
    def rebalancer(self):
        ops = self.ops
        with self._lock:
            if self._rebalancer is None:

                self._rebalancer = Rebalancer(self.settings, ops=ops)
            return self._rebalancer

    def enqueue_alert(self, alert_id: int, cell: str) -> str:
        return self.dispatcher.send("migrator.rebalance_alert", alert_id=alert_id, cell=cell)

    def enqueue_apply(self, plan_id: str) -> str:
        return self.dispatcher.send("migrator.rebalance_apply", plan_id=plan_id, actor="api")

    def close(self) -> None:
        topology = getattr(self._ops, "_topology", None) if self._ops else None
        if topology is not None and hasattr(topology, "close"):
            topology.close()


def check_control_db(settings: Settings) -> dict:

    try:
        with control_engine(settings.control_dsn).connect() as conn:
            conn.execute(text("SET LOCAL statement_timeout = 3000"))
            conn.execute(text("SELECT 1"))
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 - reported, not raised

        return {"ok": False, "error": first_line(exc)}


def check_broker(settings: Settings) -> dict:

    try:
        with Connection(settings.broker_url, connect_timeout=HEALTH_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=1, timeout=HEALTH_TIMEOUT_S)
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001

        return {"ok": False, "error": first_line(exc)}


def create_app(settings: Settings | None = None, *, require_configured_token: bool = True) -> FastAPI:
    """The API for ``settings`` (default: this process's). Refuses to build without ``api.token``."""
    settings = settings or get_settings()
    if require_configured_token and not accepted_tokens(settings):
        raise ConfigError("api.token is not set: the API refuses to run without authentication",
                          "set api.token in the config (e.g. token: ${MIGRATOR_API_TOKEN}); "
                          "`migrator api new-token` prints a fresh one")
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        services.close()

    app = FastAPI(
        lifespan=lifespan,
        title="cells-migrator",
        version=__version__,
        description="Move organizations between cells; capacity readings; the rebalancer and its "
                    "Alertmanager webhook. Every /v1 endpoint needs `Authorization: Bearer <api.token>`; "
                    "/healthz, /openapi.json and /docs do not.",
    )
    app.state.settings = settings
    app.state.services = services
    errors.install(app)
    # Authentication and the body limit before FastAPI reads anything (migrator/api/gate.py).
    app.add_middleware(RequestGate, settings=settings)

    @app.get("/healthz", tags=["health"], response_model=None, responses=responses(ok=HealthOut),
             summary="The control database and the broker answer (no authentication)")
    def healthz(request: Request):
        checks = {"control_db": check_control_db(settings), "broker": check_broker(settings)}
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"status": "ok" if ok else "failing", "checks": checks}, status_code=200 if ok else 503)

    # Prometheus: this process's metrics (alerts received, rebalancer decisions made here).
    from prometheus_client import make_asgi_app

    app.mount("/metrics", make_asgi_app())


    protected = [Depends(require_token)]
    app.include_router(moves.router, dependencies=protected)
    app.include_router(rebalance.router, dependencies=protected)

    return app
