"""Errors as JSON ``{code, message, hint}``: a stable code per MigratorError, 4xx for bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from migrator.dsn import redact
from migrator.errors import MigratorError

log = logging.getLogger(__name__)

# HTTP status per MigratorError code. Codes starting with unknown_ are 404; others not listed 409
# (the request is valid but the fleet's state refuses it).
STATUS_BY_CODE = {
    "unauthorized": 401,
    "validation_error": 422,
    "move_conflict": 409,
    "invalid_move_state": 409,
    "invalid_plan_state": 409,
    "same_cell": 409,
    "route_frozen": 409,
    "stale_token": 409,
    "stale_version": 409,
    "route_conflict": 409,
    "guardrail_exceeded": 409,
    "permission_denied": 503,  # the API's own certificate may not do this: an operator must fix it
    "cell_unavailable": 503,
    "broker_unavailable": 503,
    "config_error": 500,
}


def status_for(code: str) -> int:
    if code in STATUS_BY_CODE:
        return STATUS_BY_CODE[code]
    if code.startswith("unknown_"):
        return 404
    return 409


def error_body(code: str, message: str, hint: str | None = None, **extra) -> dict:
    return {"code": code, "message": redact(message), "hint": redact(hint) if hint else None, **extra}


def install(app: FastAPI) -> None:
    @app.exception_handler(MigratorError)
    async def migrator_error(request: Request, exc: MigratorError):
        status = status_for(exc.code)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status >= 500:
            log.error("api: %s %s: %s", request.method, request.url.path, redact(str(exc)))
        return JSONResponse(error_body(exc.code, exc.message, exc.hint, **exc.extra), status_code=status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            problems.append({"field": where, "problem": str(err.get("msg", "invalid"))})
        listing = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
        return JSONResponse(error_body("validation_error", f"invalid request: {listing}",
                                       "see /openapi.json for the expected fields", problems=problems),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status_code, "http_error")
        hint = "send a smaller body; the API takes JSON documents of a few KiB" if exc.status_code == 413 \
            else "see /openapi.json for the endpoints"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 413:
            headers["connection"] = "close"  # the rest of the body is never read
        return JSONResponse(error_body(code, str(exc.detail), hint), status_code=exc.status_code,
                            headers=headers or None)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("api: %s %s failed", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error", "see the API server's log"),
                            status_code=500)
