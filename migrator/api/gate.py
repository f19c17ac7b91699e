"""The API's front door, an ASGI middleware that runs before FastAPI reads anything of a request:

1. authentication: every path but the public ones (``/healthz``, the OpenAPI document and docs,
   ``/metrics``) needs the bearer token of ``api.token``; without it the answer is 401 at once, and
   not one byte of the body is read;
2. the body's size: a ``Content-Length`` above ``api.max_body_bytes`` is answered 413 at once; a body
   without one (chunked) is counted as it streams in and refused with 413 when it passes the limit.

Neither case buffers the body: the server reads at most one chunk (a few KiB) before answering, then
closes the connection. The routes keep their own token dependency (it documents the security scheme
in /openapi.json and guards a route mounted without this middleware).
"""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException

from migrator.api.auth import accepted_tokens, token_matches

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
PUBLIC_PREFIXES = ("/metrics",)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (an HTTPException, so FastAPI's
    body parsing passes it on to the error handler: 413 ``body_too_large``)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the limit of {limit} bytes (api.max_body_bytes)")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send_error(send, status: int, code: str, message: str, hint: str, headers=()) -> None:
    body = json.dumps({"code": code, "message": message, "hint": hint}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestGate:
    def __init__(self, app, *, settings):
        self.app = app
        self.settings = settings

    @property
    def max_body(self) -> int:
        return self.settings.api.max_body_bytes

    def _authenticated(self, scope) -> bool:
        value = _header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        accepted = accepted_tokens(self.settings)
        return bool(accepted) and scheme.lower() == "bearer" and token_matches(token.strip(), accepted)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not is_public(scope["path"]) and not self._authenticated(scope):
            client = (scope.get("client") or ("?",))[0]
            log.warning("api: refused %s %s from %s: missing or wrong bearer token", scope["method"], scope["path"],
                        client)
            return await _send_error(send, 401, "unauthorized", "missing or wrong bearer token",
                                     "send the header `Authorization: Bearer <api.token>`",
                                     [(b"www-authenticate", b"Bearer")])
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await _send_error(send, 400, "bad_request", f"Content-Length {declared!r} is not a number",
                                         "send a valid Content-Length")
            if length > self.max_body:
                return await _send_error(send, 413, "body_too_large",
                                         f"request body of {length} bytes is larger than the limit of "
                                         f"{self.max_body} bytes (api.max_body_bytes)",
                                         "send a smaller body; the API takes JSON documents of a few KiB")
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _send_error(send, 413, "body_too_large",
                              f"request body is larger than the limit of {self.max_body} bytes (api.max_body_bytes)",
                              "send a smaller body; the API takes JSON documents of a few KiB")
