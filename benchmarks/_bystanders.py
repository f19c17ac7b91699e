"""Fill a benchmark cell with other organizations ("bystanders") in bulk, inside PostgreSQL.

Seeding thousands of organizations through ``migrator seed`` takes minutes per million rows (one
transaction per organization). Here one *template* organization is seeded the normal way, then
cloned ``k`` times with ``INSERT … SELECT … CROSS JOIN generate_series(a, b) AS k``: every id and
every column that holds an id is shifted by ``k * STRIDE``, so each clone is a separate organization
with its own namespaces, projects and so on, every sharding-key chain intact, and all ids inside
the cell's sequence range (ADR 0002). Triggers (the freeze guard, change capture, foreign keys) are
off for the bulk insert (``session_replication_role = replica``): the clones are consistent by
construction.

Afterwards each organization table's sequence is set to the middle of the clones' key space, so an
organization seeded later (the one a benchmark moves) has bystanders' keys on both sides of its own,
as in a cell where organizations come and go.
"""

from __future__ import annotations

import math
import time

import psycopg
from psycopg import sql

# Columns of the sample schema holding an id of an organization-scoped row (shifted per clone).
ID_COLUMNS = {
    "organizations": ("id",),
    "namespaces": ("id", "organization_id", "parent_id"),
    "projects": ("id", "namespace_id"),
    "issues": ("id", "project_id"),
    "merge_requests": ("id", "project_id"),
    "notes": ("id", "project_id", "noteable_id"),
    "labels": ("id", "project_id"),
    "label_links": ("label_id", "target_id"),
    "uploads": ("id", "project_id"),
    "lfs_objects": ("id", "project_id"),
    "ci_pipelines": ("id", "project_id"),
    "ci_builds": ("id", "pipeline_id"),
}
UNIQUE_TEXT = {"organizations": ("path",)}  # made unique per clone
STRIDE = 10**8  # id distance between two clones (the cell's range is 10^12 wide)
TEMPLATE_ROWS = 4000
CLONES_PER_STATEMENT = 100


def _columns(conn, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND attgenerated = '' ORDER BY attnum", (table,))]


def _clone_sql(conn, table: str) -> sql.Composable:
    cols = _columns(conn, table)
    exprs = []
    for c in cols:
        if c in ID_COLUMNS[table]:
            exprs.append(sql.SQL("s.{c} + k * {stride}").format(c=sql.Identifier(c), stride=sql.Literal(STRIDE)))
        elif c in UNIQUE_TEXT.get(table, ()):
            exprs.append(sql.SQL("s.{c} || '-' || k").format(c=sql.Identifier(c)))
        else:
            exprs.append(sql.SQL("s.{}").format(sql.Identifier(c)))
    first = sql.Identifier(ID_COLUMNS[table][0])
    return sql.SQL(
        "INSERT INTO {t} ({cols}) SELECT {exprs} FROM {t} AS s"
        " CROSS JOIN generate_series(%(a)s::bigint, %(b)s::bigint) AS k WHERE s.{first} < %(limit)s"
    ).format(t=sql.Identifier(table), cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
             exprs=sql.SQL(", ").join(exprs), first=first)


def seed_template(settings, cell: str, rows: int = TEMPLATE_ROWS):
    """The organization every bystander is a clone of (the cell must hold no other organization yet)."""
    from migrator.sample.seed import seed_organizations

    (org,) = seed_organizations(settings, cell, orgs=1, rows=rows, blobs=0, skew=False, seed=7)
    return org


def add_clones(dsn: str, template_rows: int, first: int, last: int, log=lambda msg: None,
               per_statement: int = CLONES_PER_STATEMENT) -> int:
    """Clones ``first``..``last`` of the cell's template organization; returns the rows inserted.

    ``per_statement`` clones are inserted by one statement, row by row across them: their rows share
    every page of the table (as organizations writing at the same time do). With 1, each clone's rows
    are contiguous (as an organization seeded or moved in at once)."""
    inserted = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        lo = conn.execute("SELECT min(id) FROM organizations").fetchone()[0]
        limit = lo + STRIDE  # the template's ids (clone k starts at lo + k * STRIDE)
        stmts = {t: _clone_sql(conn, t) for t in ID_COLUMNS}
        t0 = time.monotonic()
        for a in range(first, last + 1, per_statement):
            b = min(last, a + per_statement - 1)
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                for stmt in stmts.values():
                    inserted += conn.execute(stmt, {"a": a, "b": b, "limit": limit}).rowcount
            log(f"clones {a}-{b} of {last}: {inserted:,} rows in {time.monotonic() - t0:.0f}s")
    return inserted


def center_sequences(dsn: str, clones: int) -> None:
    """Point every organization table's sequence between clone ``clones // 2`` and the next one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        lo = conn.execute("SELECT min(id) FROM organizations").fetchone()[0]
        at = lo + (clones // 2) * STRIDE + STRIDE // 2
        for table, cols in ID_COLUMNS.items():
            if cols[0] != "id":
                continue
            conn.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, at))


def vacuum_analyze(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def fill_cell(settings, cell: str, dsn: str, rows: int, log=lambda msg: None,
              template_rows: int = TEMPLATE_ROWS) -> dict:
    """Bystanders of about ``rows`` rows in all (template + clones); sequences centred; vacuumed."""
    t0 = time.monotonic()
    template = seed_template(settings, cell, min(template_rows, rows))
    clones = max(0, math.ceil(rows / template.rows) - 1)
    inserted = add_clones(dsn, template.rows, 1, clones, log) if clones else 0
    center_sequences(dsn, clones)
    vacuum_analyze(dsn)
    return {"organizations": clones + 1, "rows": template.rows + inserted, "clones": clones,
            "template_rows": template.rows, "s": round(time.monotonic() - t0, 1)}


def grow_cell(dsn: str, template_rows: int, have_clones: int, rows: int, log=lambda msg: None) -> dict:
    """Add clones until the bystanders hold about ``rows`` rows (sequences left where they are)."""
    t0 = time.monotonic()
    clones = max(have_clones, math.ceil(rows / template_rows) - 1)
    inserted = add_clones(dsn, template_rows, have_clones + 1, clones, log) if clones > have_clones else 0
    vacuum_analyze(dsn)
    return {"organizations": clones + 1, "rows_added": inserted, "clones": clones, "s": round(time.monotonic() - t0, 1)}
