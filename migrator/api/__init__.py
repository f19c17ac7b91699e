"""The operators' HTTP API (FastAPI): moves, cells and their capacity, Alertmanager alerts, the rebalancer.

``create_app(settings)`` builds it; ``migrator api serve`` runs it with uvicorn. OpenAPI at
``/openapi.json``, interactive docs at ``/docs``. Every endpoint but ``/healthz`` needs the bearer
token of ``api.token`` (docs/runbooks/api-token-leaked.md).
"""

from migrator.api.app import create_app

__all__ = ["create_app"]
