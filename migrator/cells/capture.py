"""Change capture for online moves (docs/adr/0009-online-moves.md).

An AFTER ROW trigger on every organization table logs the primary key of each row an INSERT,
UPDATE or DELETE touches (old and new key) into ``migrator.change_log``, but only for organizations
listed in ``migrator.captures``: with no capture running, the trigger returns after one cheap
``EXISTS``. The log holds keys only; a catch-up round re-reads those keys' current rows from the
source, so replaying a key twice, or in any order, gives the same result. The log lives in the
migrator's own schema, is written in the writer's transaction (a rolled-back write logs nothing)
and is deleted with its capture.

A row whose organization cannot be resolved any more (a child deleted by ON DELETE CASCADE after
its parent) is logged with a NULL capture: every running capture of the cell considers such keys.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from migrator.cells.introspect import LiveSchema
from migrator.cells.names import qualified, regclass_text
from migrator.dictionary import Dictionary

SCHEMA = "migrator"
TRIGGER = "migrator_change_capture"
LOG_FUNCTION = "capture_log"
_LOCK_KEY = 7242001

_BASE_DDL = """
CREATE SCHEMA IF NOT EXISTS migrator;
CREATE TABLE IF NOT EXISTS migrator.captures (
    organization_id bigint PRIMARY KEY,
    capture_id text NOT NULL UNIQUE,
    move_id text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS migrator.change_log (
    id bigserial PRIMARY KEY,
    capture_id text,
    table_name text NOT NULL,
    pk jsonb NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
-- The writer's transaction: an entry is applied once that transaction is visible in a round's snapshot
-- (ids are assigned at insert, not at commit, so they say nothing about what has committed).
ALTER TABLE migrator.change_log ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS change_log_capture ON migrator.change_log (capture_id, id);
CREATE INDEX IF NOT EXISTS change_log_capture_xid ON migrator.change_log (capture_id, xid);
GRANT USAGE ON SCHEMA migrator TO PUBLIC;
GRANT SELECT ON migrator.captures TO PUBLIC;
CREATE OR REPLACE FUNCTION migrator.capture_log(org bigint, tbl text, key jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, migrator AS $fn$
DECLARE
    cap text;
BEGIN
    IF org IS NULL THEN
        INSERT INTO migrator.change_log (capture_id, table_name, pk) VALUES (NULL, tbl, key);
        RETURN;
    END IF;
    SELECT c.capture_id INTO cap FROM migrator.captures c WHERE c.organization_id = org;
    IF cap IS NOT NULL THEN
        INSERT INTO migrator.change_log (capture_id, table_name, pk) VALUES (cap, tbl, key);
    END IF;
END
$fn$;
"""


def function_name(table: str) -> str:
    return f"capture_{table}"[:63]


def _key_json(live: LiveSchema, table: str, rowvar: str) -> sql.Composable:
    cols = live.tables[table].primary_key
    return sql.SQL("jsonb_build_array({})").format(
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(rowvar), sql.Identifier(c)) for c in cols))


def function_body(dictionary: Dictionary, live: LiveSchema, table: str) -> sql.Composable:
    return sql.SQL("""
BEGIN
    IF NOT EXISTS (SELECT 1 FROM migrator.captures) THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM migrator.capture_log({old_org}, TG_TABLE_NAME::text, {old_key});
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND {new_key} IS DISTINCT FROM {old_key}) THEN
        PERFORM migrator.capture_log({new_org}, TG_TABLE_NAME::text, {new_key});
    END IF;
    RETURN NULL;
END
""").format(old_org=dictionary.org_of_row_sql(table, live, "OLD"),
            new_org=dictionary.org_of_row_sql(table, live, "NEW"),
            old_key=_key_json(live, table, "OLD"), new_key=_key_json(live, table, "NEW"))


# Every ALTER TABLE that switches a trigger off (or to replica/always-only firing) is recorded, so a
# move can tell that its capture may have missed changes even if the trigger was switched back on
# since (a careless `ALTER TABLE … DISABLE TRIGGER ALL` during a data fix). An event trigger needs a
# superuser; without one the point-in-time check of the triggers' state is all there is.
DDL_WATCH = "migrator_ddl_watch"
_DDL_WATCH_DDL = """
CREATE TABLE IF NOT EXISTS migrator.ddl_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tag text NOT NULL,
    relid oid NOT NULL,
    object text NOT NULL,
    query text NOT NULL
);
CREATE OR REPLACE FUNCTION migrator.ddl_watch() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, migrator AS $fn$
DECLARE
    r record;
BEGIN
    IF current_query() !~* '(disable|enable[[:space:]]+(replica|always))[[:space:]]+trigger' THEN
        RETURN;
    END IF;
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
        INSERT INTO migrator.ddl_log (tag, relid, object, query)
        VALUES (r.command_tag, r.objid, r.object_identity, left(current_query(), 2000));
    END LOOP;
END
$fn$;
"""


def _install_ddl_watch(conn: psycopg.Connection) -> bool:
    """The event trigger recording trigger switches; False when this role may not create one."""
    if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        return False
    conn.execute(_DDL_WATCH_DDL)
    if not conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s", (DDL_WATCH,)).fetchone():
        conn.execute(sql.SQL("CREATE EVENT TRIGGER {} ON ddl_command_end WHEN TAG IN ('ALTER TABLE') "
                             "EXECUTE FUNCTION migrator.ddl_watch()").format(sql.Identifier(DDL_WATCH)))
    return True


def capture_gaps(conn: psycopg.Connection, tables: list[str], since,
                 triggers: tuple[str, ...] = (TRIGGER,)) -> list[str]:
    """Why a capture that started at ``since`` may have missed changes (empty: it cannot have): an
    organization table without one of ``triggers``, or with it not firing for ordinary sessions now, or
    any trigger of it switched off since ``since`` (recorded by the DDL watch)."""
    problems = []
    rows = conn.execute(
        """SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END,
                  t.tgname, t.tgenabled
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND t.tgname = ANY(%(triggers)s)
            WHERE (CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END)
                  = ANY(%(tables)s)""",
        {"triggers": list(triggers), "tables": list(tables)}).fetchall()
    state = {(table, trigger): enabled for table, trigger, enabled in rows}
    for table in tables:
        for trigger in triggers:
            enabled = state.get((table, trigger))
            if enabled is None:
                problems.append(f"{table}: no trigger {trigger}")
            elif enabled not in ("O", "A"):
                how = "disabled" if enabled == "D" else "fires for replicas only"
                problems.append(f"{table}: trigger {trigger} {how}")
    if conn.execute("SELECT to_regclass('migrator.ddl_log') IS NOT NULL").fetchone()[0]:
        for at, obj, query in conn.execute(
                """SELECT d.at, d.object, d.query FROM migrator.ddl_log d
                     JOIN pg_catalog.pg_class c ON c.oid = d.relid
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                    WHERE d.at >= %(since)s
                      AND (CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END)
                          = ANY(%(tables)s)
                    ORDER BY d.id""", {"since": since, "tables": list(tables)}):
            problems.append(f"{obj}: triggers switched at {at:%H:%M:%S} UTC ({' '.join(query.split())[:120]})")
    return problems


def install_capture(conn: psycopg.Connection, dictionary: Dictionary, live: LiveSchema) -> list[str]:
    """Create (or replace) the change-capture triggers on every organization table, and the DDL watch
    (superuser only). Idempotent."""
    installed = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_BASE_DDL)
        _install_ddl_watch(conn)
        for table in dictionary.org_tables():
            if table not in live.tables:
                continue
            fn = sql.Identifier(SCHEMA, function_name(table))
            body = function_body(dictionary, live, table).as_string(conn)
            conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                fn, sql.Literal(body)))
            target = qualified(table)
            exists = conn.execute("SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = %s::regclass",
                                  (TRIGGER, target.as_string(conn))).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                                     "EXECUTE FUNCTION {}()").format(sql.Identifier(TRIGGER), target, fn))
            installed.append(table)
    return installed


def uninstall_capture(conn: psycopg.Connection, dictionary: Dictionary) -> None:
    with conn.transaction():
        for table in dictionary.org_tables():
            exists = conn.execute("SELECT to_regclass(%s)", (regclass_text(table, conn),)).fetchone()
            if exists and exists[0]:
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(TRIGGER), qualified(table)))
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(SCHEMA, function_name(table))))
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(DDL_WATCH)))
        conn.execute("DROP FUNCTION IF EXISTS migrator.ddl_watch()")
        conn.execute("DROP TABLE IF EXISTS migrator.change_log, migrator.captures, migrator.ddl_log")
        conn.execute("DROP FUNCTION IF EXISTS migrator.capture_log(bigint, text, jsonb)")


def start_capture(conn: psycopg.Connection, org: int, capture_id: str, move_id: str) -> None:
    """Start logging the organization's changes (idempotent for the same capture)."""
    with conn.transaction():
        row = conn.execute("SELECT capture_id FROM migrator.captures WHERE organization_id = %s", (org,)).fetchone()
        if row and row[0] != capture_id:
            raise psycopg.errors.UniqueViolation(
                f"organization {org} is already captured by {row[0]}")
        if not row:
            conn.execute("INSERT INTO migrator.captures (organization_id, capture_id, move_id) VALUES (%s, %s, %s)",
                         (org, capture_id, move_id))


def stop_capture(conn: psycopg.Connection, capture_id: str) -> int:
    """Stop a capture and delete its log (and unattributed entries no other capture still needs)."""
    with conn.transaction():
        conn.execute("DELETE FROM migrator.captures WHERE capture_id = %s", (capture_id,))
        deleted = conn.execute("DELETE FROM migrator.change_log WHERE capture_id = %s", (capture_id,)).rowcount
        others = conn.execute("SELECT min(id) FROM migrator.change_log WHERE capture_id IS NOT NULL").fetchone()[0]
        if not conn.execute("SELECT EXISTS (SELECT 1 FROM migrator.captures)").fetchone()[0]:
            deleted += conn.execute("DELETE FROM migrator.change_log WHERE capture_id IS NULL").rowcount
        elif others is not None:
            deleted += conn.execute("DELETE FROM migrator.change_log WHERE capture_id IS NULL AND id < %s",
                                    (others,)).rowcount
    return deleted


def captures(conn: psycopg.Connection) -> list[dict]:
    if not conn.execute("SELECT to_regclass('migrator.captures') IS NOT NULL").fetchone()[0]:
        return []
    rows = conn.execute("SELECT organization_id, capture_id, move_id, started_at FROM migrator.captures").fetchall()
    return [{"organization_id": r[0], "capture_id": r[1], "move_id": r[2], "started_at": r[3]} for r in rows]


def snapshot(conn: psycopg.Connection) -> str:
    """The source's current snapshot (``pg_current_snapshot()`` as text): a catch-up round's position."""
    return str(conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])


# The log entries of a capture (and unattributed ones) that a round whose position moves from snapshot
# %(prev)s (NULL: the beginning) to %(cur)s must consider: not visible in the previous snapshot (their
# transaction had not committed when it was taken), visible in the current one. ``xid >= xmin(prev)``
# is implied by "not visible in prev" and lets the (capture_id, xid) index find them.
PENDING_ENTRIES = """
    (c.capture_id = %(cap)s OR c.capture_id IS NULL)
    AND (%(prev)s::pg_snapshot IS NULL
         OR (c.xid >= pg_snapshot_xmin(%(prev)s::pg_snapshot)
             AND NOT pg_visible_in_snapshot(c.xid, %(prev)s::pg_snapshot)))
    AND (%(cur)s::pg_snapshot IS NULL OR pg_visible_in_snapshot(c.xid, %(cur)s::pg_snapshot))
"""


def pending_keys(conn: psycopg.Connection, capture_id: str, prev: str | None, cur: str | None = None) -> int:
    """Distinct keys logged since snapshot ``prev`` (and visible in ``cur``, when given)."""
    q = sql.SQL("SELECT count(*) FROM (SELECT DISTINCT c.table_name, c.pk FROM migrator.change_log AS c WHERE {}) d")
    return int(conn.execute(q.format(sql.SQL(PENDING_ENTRIES)), {"cap": capture_id, "prev": prev, "cur": cur}
                            ).fetchone()[0])


def logged_keys(conn: psycopg.Connection, capture_id: str, table: str, prev: str | None = None,
                cur: str | None = None) -> list:
    """The distinct keys (JSON arrays) of ``table`` logged by a capture since snapshot ``prev`` (None: all)
    and, when ``cur`` is given, committed in snapshot ``cur``; as this statement's snapshot sees the log."""
    q = sql.SQL("SELECT DISTINCT c.pk FROM migrator.change_log AS c WHERE c.table_name = %(tbl)s AND {}").format(
        sql.SQL(PENDING_ENTRIES))
    return [r[0] for r in conn.execute(q, {"cap": capture_id, "tbl": table, "prev": prev, "cur": cur})]
