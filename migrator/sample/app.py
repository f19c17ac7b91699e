"""The sample application of one cell: an organization's notes, read and written in the cell's database.

    GET    /orgs/{org}/notes?limit=N        the newest notes
    GET    /orgs/{org}/notes/{id}           one note
    POST   /orgs/{org}/notes   {"note": s}  a new note (in the organization's first project): 201
    PUT    /orgs/{org}/notes/{id} {"note"}  change it
    DELETE /orgs/{org}/notes/{id}           delete it: 204
    GET    /healthz                         200 while the cell's database answers (HAProxy's health check)

Every answer names the cell that gave it (``X-Cell``). Two answers say "retry", with ``Retry-After``:

- **503 organization_frozen**: the cell's freeze guard refused the write (SQLSTATE MG001): the
  organization is moving, or it moved away and a router that has not caught up sent the write here
  (the source copy stays frozen after the flip). Nothing was written.
- **503 not_in_this_cell**: the organization has no rows here (it moved away and its source copy was
  cleaned up, and a router is behind). Nothing was read or written.

A request whose ``X-Organization-Id`` header names another organization than its path is refused
with 400: the router routes by one of them, the application must act on the same one.
"""

from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from migrator.cells.guard import FROZEN_SQLSTATE

log = logging.getLogger(__name__)

ORG_HEADER = "x-organization-id"

# Every statement names the organization: a note id of another organization is "no such note".
_FIRST_PROJECT = ("SELECT p.id FROM projects p JOIN namespaces ns ON ns.id = p.namespace_id "
                  "WHERE ns.organization_id = %s ORDER BY p.id LIMIT 1")
_LIST = ("SELECT n.id, n.note FROM notes n WHERE n.project_id IN (SELECT p.id FROM projects p JOIN namespaces ns "
         "ON ns.id = p.namespace_id WHERE ns.organization_id = %s) ORDER BY n.id DESC LIMIT %s")
_GET = ("SELECT n.id, n.note FROM notes n WHERE n.id = %s AND n.project_id IN (SELECT p.id FROM projects p "
        "JOIN namespaces ns ON ns.id = p.namespace_id WHERE ns.organization_id = %s)")
_INSERT = "INSERT INTO notes (project_id, noteable_type, noteable_id, note) VALUES (%s, 'Issue', 0, %s) RETURNING id"
_UPDATE = ("UPDATE notes n SET note = %s, updated_at = now() WHERE n.id = %s AND n.project_id IN (SELECT p.id "
           "FROM projects p JOIN namespaces ns ON ns.id = p.namespace_id WHERE ns.organization_id = %s)")
_DELETE = ("DELETE FROM notes n WHERE n.id = %s AND n.project_id IN (SELECT p.id FROM projects p "
           "JOIN namespaces ns ON ns.id = p.namespace_id WHERE ns.organization_id = %s)")


class NoteIn(BaseModel):
    note: str = Field(min_length=1, max_length=10_000)


class _Retry(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def create_app(dsn: str, cell: str, *, retry_after_s: int = 1, pool_size: int = 4) -> FastAPI:
    """The application of ``cell``, on its database ``dsn``."""
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=pool_size, open=False,
                               kwargs={"autocommit": True, "application_name": f"sample-app {cell}"})

    async def lifespan(_app):
        await pool.open()
        yield
        await pool.close()

    app = FastAPI(title=f"cells-migrator sample application ({cell})", lifespan=lifespan)

    def answer(status: int, body: dict | None = None, **headers) -> Response:
        headers = {"X-Cell": cell, **headers}
        if body is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(body, status_code=status, headers=headers)

    def retry(code: str, message: str) -> Response:
        return answer(503, {"code": code, "message": message, "cell": cell}, **{"Retry-After": str(retry_after_s)})

    async def run(org: int, request: Request, work):
        header = request.headers.get(ORG_HEADER)
        if header is not None and header.strip() != str(org):
            return answer(400, {"code": "organization_mismatch",
                                "message": f"X-Organization-Id {header!r} is not the path's organization {org}"})
        try:
            async with pool.connection() as conn:
                return await work(conn)
        except _Retry as exc:
            return retry(exc.code, exc.message)
        except psycopg.Error as exc:
            if exc.sqlstate == FROZEN_SQLSTATE:
                return retry("organization_frozen", f"organization {org} is read-only while it moves between "
                                                    "cells; nothing was written")
            log.exception("sample app %s: database error", cell)
            return retry("database_error", f"cell {cell}'s database: {type(exc).__name__}")

    async def require_org(conn, org: int) -> None:
        """Raise the retryable answer when the organization has no rows in this cell."""
        row = await (await conn.execute("SELECT 1 FROM organizations WHERE id = %s", (org,))).fetchone()
        if row is None:
            raise _Retry("not_in_this_cell", f"organization {org} is not in cell {cell} (a router may be behind)")

    @app.get("/healthz")
    async def healthz():
        try:
            async with pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - a health check answers, whatever happened
            return answer(503, {"cell": cell, "ok": False, "error": type(exc).__name__})
        return answer(200, {"cell": cell, "ok": True})

    @app.get("/orgs/{org}/notes")
    async def list_notes(org: int, request: Request, limit: int = 20):
        async def work(conn):
            await require_org(conn, org)
            cur = await conn.execute(_LIST, (org, max(1, min(limit, 1000))))
            return answer(200, {"cell": cell, "notes": [{"id": i, "note": t} for i, t in await cur.fetchall()]})

        return await run(org, request, work)

    @app.get("/orgs/{org}/notes/{note_id}")
    async def get_note(org: int, note_id: int, request: Request):
        async def work(conn):
            row = await (await conn.execute(_GET, (note_id, org))).fetchone()
            if row is None:
                await require_org(conn, org)
                return answer(404, {"code": "no_such_note", "message": f"organization {org} has no note {note_id}"})
            return answer(200, {"id": row[0], "note": row[1], "cell": cell})

        return await run(org, request, work)

    @app.post("/orgs/{org}/notes", status_code=201)
    async def create_note(org: int, body: NoteIn, request: Request):
        async def work(conn):
            project = await (await conn.execute(_FIRST_PROJECT, (org,))).fetchone()
            if project is None:
                await require_org(conn, org)
                return answer(409, {"code": "no_project", "message": f"organization {org} has no project"})
            row = await (await conn.execute(_INSERT, (project[0], body.note))).fetchone()
            return answer(201, {"id": row[0], "note": body.note, "cell": cell})

        return await run(org, request, work)

    @app.put("/orgs/{org}/notes/{note_id}")
    async def update_note(org: int, note_id: int, body: NoteIn, request: Request):
        async def work(conn):
            cur = await conn.execute(_UPDATE, (body.note, note_id, org))
            if cur.rowcount != 1:
                await require_org(conn, org)
                return answer(404, {"code": "no_such_note", "message": f"organization {org} has no note {note_id}"})
            return answer(200, {"id": note_id, "note": body.note, "cell": cell})

        return await run(org, request, work)

    @app.delete("/orgs/{org}/notes/{note_id}", status_code=204)
    async def delete_note(org: int, note_id: int, request: Request):
        async def work(conn):
            cur = await conn.execute(_DELETE, (note_id, org))
            if cur.rowcount != 1:
                await require_org(conn, org)
                return answer(404, {"code": "no_such_note", "message": f"organization {org} has no note {note_id}"})
            return answer(204)

        return await run(org, request, work)

    return app


def serve(settings, cell: str, listen: str, *, log_level: str = "warning") -> None:
    """Serve the application of ``cell`` on ``listen`` (HOST:PORT or unix:/path) until interrupted."""
    # deferred: only `sample-app serve` runs a server
    import uvicorn

    app = create_app(settings.cell(cell).dsn, cell, retry_after_s=settings.router.retry_after_s)
    where: dict = {}
    if listen.startswith("unix:"):
        where["uds"] = listen.removeprefix("unix:")
    else:
        host, _, port = listen.rpartition(":")
        where.update(host=host.strip("[]") or "127.0.0.1", port=int(port))
    uvicorn.run(app, **where, log_level=log_level, access_log=False, server_header=False, proxy_headers=False)
