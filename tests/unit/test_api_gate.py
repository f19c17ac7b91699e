"""The API's front door (migrator/api/gate.py) around a tiny app that counts what it reads: a request
without the token, or with a body over the limit, is answered before the app reads any of it."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from migrator.api import errors
from migrator.api.gate import RequestGate

TOKEN = "gate-test-token-0123456789"
LIMIT = 4096


def _client():
    settings = SimpleNamespace(api=SimpleNamespace(token=TOKEN, previous_tokens=[], max_body_bytes=LIMIT))
    app = FastAPI()
    errors.install(app)
    reads = []

    @app.post("/v1/echo")
    async def echo(request: Request):
        body = await request.body()
        reads.append(len(body))
        return {"bytes": len(body)}

    @app.post("/v1/parsed")
    def parsed(payload: dict):
        return {"keys": len(payload)}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    app.add_middleware(RequestGate, settings=settings)
    return TestClient(app), reads


def _chunks(total: int, size: int = 1024):
    for _ in range(total // size):
        yield b"x" * size


def test_authentication_comes_before_the_body():
    client, reads = _client()
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.post("/v1/echo", content=b"x" * 100, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.post("/v1/echo", content=_chunks(LIMIT * 4), headers=headers)  # streamed, no Content-Length
        assert r.status_code == 401
    assert reads == []
    assert client.get("/healthz").status_code == 200  # public


def test_bodies_over_the_limit_are_refused():
    client, reads = _client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/v1/echo", content=b"x" * (LIMIT + 1), headers=auth)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large" and "api.max_body_bytes" in r.json()["message"]
    assert reads == []  # refused on its Content-Length
    for path in ("/v1/echo", "/v1/parsed"):
        r = client.post(path, content=_chunks(LIMIT * 4), headers={**auth, "content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "body_too_large", r.text
    assert reads == []
    r = client.post("/v1/echo", content=b"x" * LIMIT, headers=auth)
    assert r.status_code == 200 and r.json() == {"bytes": LIMIT}
    r = client.post("/v1/echo", content=b"x", headers={**auth, "content-length": "ten"})
    assert r.status_code == 400
