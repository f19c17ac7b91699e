"""The freeze guard: the cell database itself refuses writes to a frozen organization's rows.

The Topology Service marks a moving organization's route frozen so the application can answer
"read-only, retry later"; the guard is the second layer, for a write that slips past the app.
It lives in schema ``migrator`` of every cell:

* ``migrator.frozen_orgs(organization_id, token, frozen_at)``: the organizations frozen here;
* per organization-scoped table a ``BEFORE INSERT OR UPDATE OR DELETE ... FOR EACH ROW`` trigger
  ``migrator_freeze_guard`` calling a generated function ``migrator.guard_<table>()``. It returns at
  once while no organization is frozen (one index-only probe of an empty table); otherwise it
  computes the organization of ``OLD`` and ``NEW`` by walking the sharding keys
  (:meth:`Dictionary.org_of_row_sql`) and raises SQLSTATE ``MG001`` when that organization is
  frozen, unless the session's ``migrator.move_token`` setting is the freeze's token (the mover's
  own writes, e.g. cleanup);
* a ``BEFORE TRUNCATE`` statement trigger ``migrator_freeze_guard_truncate`` refusing to truncate an
  organization table while any organization is frozen.

Privileges: every role may see *which* organizations are frozen (``SELECT (organization_id)`` on
``frozen_orgs`` is granted to PUBLIC), so the per-table functions run with the writer's rights and
their fast path costs one probe; the tokens are readable only by ``migrator.refuse_if_frozen`` and
``migrator.freeze_guard_truncate``, which are ``SECURITY DEFINER`` with a pinned ``search_path``.
All names in generated SQL are schema-qualified. Installing is idempotent and changes nothing when
the guard is already in place (no DDL, no locks).
Triggers do not fire under ``session_replication_role = replica`` (the copier's target sessions).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from migrator.cells.introspect import LiveSchema
from migrator.cells.names import APP_SCHEMAS_SQL, dotted, qualified
from migrator.dictionary.model import Dictionary
from migrator.errors import MigratorError

FROZEN_SQLSTATE = "MG001"
GUARD_SCHEMA = "migrator"
TRIGGER_NAME = "migrator_freeze_guard"
TRUNCATE_TRIGGER_NAME = "migrator_freeze_guard_truncate"
MOVE_TOKEN_SETTING = "migrator.move_token"
FUNCTION_PREFIX = "guard_"
CHECK_FUNCTION = "refuse_if_frozen"
TRUNCATE_FUNCTION = "freeze_guard_truncate"
FROZEN_HINT = "retry later; the organization is read-only while it moves between cells"

# tgtype bits (pg_trigger.h): ROW 1, BEFORE 2, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32.
_ROW_TGTYPE = 1 | 2 | 4 | 8 | 16
_TRUNCATE_TGTYPE = 2 | 32
_LOCK_KEY = 0x6D67677561726400  # "mgguard\0": serializes concurrent installs in one database
_SEARCH_PATH = ("search_path", "pg_catalog, pg_temp")

_BASE_DDL = """
CREATE SCHEMA IF NOT EXISTS migrator;
CREATE TABLE IF NOT EXISTS migrator.frozen_orgs (
    organization_id bigint PRIMARY KEY,
    token text NOT NULL,
    frozen_at timestamptz NOT NULL DEFAULT now()
);
"""

# Writers see which organizations are frozen (the fast path), never the tokens.
_GRANTS = """
GRANT USAGE ON SCHEMA migrator TO PUBLIC;
GRANT SELECT (organization_id) ON migrator.frozen_orgs TO PUBLIC;
"""
_GRANTED = """
SELECT pg_catalog.has_schema_privilege('public', 'migrator', 'USAGE')
   AND pg_catalog.has_column_privilege('public', 'migrator.frozen_orgs', 'organization_id', 'SELECT')
"""

_CHECK_BODY = """
DECLARE
    frozen_token text;
BEGIN
    IF org IS NULL THEN
        RETURN;
    END IF;
    SELECT f.token INTO frozen_token FROM migrator.frozen_orgs AS f WHERE f.organization_id = org;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF pg_catalog.current_setting('migrator.move_token', true) IS DISTINCT FROM frozen_token THEN
        RAISE EXCEPTION USING
            ERRCODE = 'MG001',
            MESSAGE = pg_catalog.format(
                'organization %s is frozen for a move: writes are refused until the move finishes (table %s)',
                org, tbl),
            HINT = 'retry later; the organization is read-only while it moves between cells';
    END IF;
END
"""

_TRUNCATE_BODY = """
DECLARE
    orgs text;
BEGIN
    SELECT pg_catalog.string_agg(f.organization_id::text, ', ' ORDER BY f.organization_id) INTO orgs
    FROM migrator.frozen_orgs AS f
    WHERE f.token IS DISTINCT FROM pg_catalog.current_setting('migrator.move_token', true);
    IF orgs IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'MG001',
            MESSAGE = pg_catalog.format(
                'table %s cannot be truncated while organizations are frozen for a move (organizations %s)',
                TG_TABLE_NAME, orgs),
            HINT = 'retry later; the organization is read-only while it moves between cells';
    END IF;
    RETURN NULL;
END
"""


class GuardNotInstalled(MigratorError):
    code = "guard_not_installed"


@dataclass
class GuardStatus:
    """What :func:`install_guard` found and did."""

    tables: list[str] = field(default_factory=list)  # organization tables guarded
    changed: list[str] = field(default_factory=list)  # objects (re)created by this call
    removed: list[str] = field(default_factory=list)  # stale triggers/functions dropped
    missing: list[str] = field(default_factory=list)  # dictionary tables absent from the database

    @property
    def did_change(self) -> bool:
        return bool(self.changed or self.removed)


def guard_function_name(table: str) -> str:
    """``guard_<table>``, shortened with a hash when it would exceed PostgreSQL's 63-byte names."""
    name = FUNCTION_PREFIX + table
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{FUNCTION_PREFIX}{table.encode()[:46].decode(errors='ignore')}_{digest}"


def _render(conn: psycopg.Connection, composable: sql.Composable) -> str:
    return composable.as_string(conn)


def guard_function_body(dictionary: Dictionary, live: LiveSchema, table: str) -> sql.Composable:
    """The plpgsql body of ``migrator.guard_<table>()``."""
    check = sql.Identifier(GUARD_SCHEMA, CHECK_FUNCTION)
    return sql.SQL("""
BEGIN
    IF NOT EXISTS (SELECT 1 FROM migrator.frozen_orgs) THEN
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM {check}({old_org}, TG_TABLE_NAME);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    PERFORM {check}({new_org}, TG_TABLE_NAME);
    RETURN NEW;
END
""").format(
        check=check,
        old_org=dictionary.org_of_row_sql(table, live, "OLD"),
        new_org=dictionary.org_of_row_sql(table, live, "NEW"),
    )


def _existing_functions(conn: psycopg.Connection) -> dict[str, tuple[str, bool, list[str] | None]]:
    rows = conn.execute(
        """SELECT p.proname, p.prosrc, p.prosecdef, p.proconfig
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = %s""",
        (GUARD_SCHEMA,),
    ).fetchall()
    return {name: (src, secdef, config) for name, src, secdef, config in rows}


def _existing_triggers(conn: psycopg.Connection) -> dict[tuple[str, str], tuple[str, int, str]]:
    """(table, trigger) -> (function name, tgtype, tgenabled) for our triggers on the application's tables
    (every schema; tables named as migrator.cells.names names them)."""
    rows = conn.execute(
        sql.SQL("""SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END,
                  t.tgname, p.proname, pn.nspname, t.tgtype, t.tgenabled
           FROM pg_catalog.pg_trigger t
           JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
           JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
           WHERE {} AND t.tgname IN (%s, %s) AND NOT t.tgisinternal AND t.tgparentid = 0"""
        ).format(sql.SQL(APP_SCHEMAS_SQL)),
        (TRIGGER_NAME, TRUNCATE_TRIGGER_NAME),
    ).fetchall()
    return {(rel, tg): (f"{fn_schema}.{fn}", tgtype, enabled) for rel, tg, fn, fn_schema, tgtype, enabled in rows}


def _function_ok(existing, name: str, body: str, definer: bool = False) -> bool:
    found = existing.get(name)
    if found is None:
        return False
    src, secdef, config = found
    wanted_config = [f"{_SEARCH_PATH[0]}={_SEARCH_PATH[1]}"] if definer else []
    return src == body and secdef == definer and list(config or []) == wanted_config


def _create_function(conn: psycopg.Connection, name: str, signature: sql.Composable, returns: str, body: str,
                     definer: bool = False) -> None:
    """CREATE OR REPLACE a plpgsql function; ``definer``: SECURITY DEFINER with a pinned search_path."""
    security = sql.SQL(" SECURITY DEFINER SET {} = {}").format(
        sql.Identifier(_SEARCH_PATH[0]), sql.SQL(_SEARCH_PATH[1])) if definer else sql.SQL("")
    conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}{} RETURNS {} LANGUAGE plpgsql{} AS {}").format(
        sql.Identifier(GUARD_SCHEMA, name), signature, sql.SQL(returns), security, sql.Literal(body)))


def _has_frozen_orgs_table(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT pg_catalog.to_regclass('migrator.frozen_orgs') IS NOT NULL").fetchone()[0]


def install_guard(conn: psycopg.Connection, dictionary: Dictionary, live: LiveSchema) -> GuardStatus:
    """Install (or repair) the guard on every organization table of ``dictionary`` present in ``live``.

    Idempotent: objects already as wanted are left untouched, changed or disabled ones are replaced,
    triggers and functions of tables no longer organization-scoped are dropped. Runs in one
    transaction (a savepoint if the connection is already in one).
    """
    status = GuardStatus()
    with conn.transaction():
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("SELECT pg_catalog.set_config('lock_timeout', '10s', true)")
        if not _has_frozen_orgs_table(conn):
            conn.execute(_BASE_DDL)
            status.changed.append("migrator.frozen_orgs")
        if not conn.execute(_GRANTED).fetchone()[0]:
            conn.execute(_GRANTS)
            status.changed.append("migrator.frozen_orgs (grants)")
        functions = _existing_functions(conn)
        triggers = _existing_triggers(conn)

        check_sig = sql.SQL("(org bigint, tbl text)")
        if not _function_ok(functions, CHECK_FUNCTION, _CHECK_BODY, definer=True):
            _create_function(conn, CHECK_FUNCTION, check_sig, "void", _CHECK_BODY, definer=True)
            status.changed.append(f"{GUARD_SCHEMA}.{CHECK_FUNCTION}")
        if not _function_ok(functions, TRUNCATE_FUNCTION, _TRUNCATE_BODY, definer=True):
            _create_function(conn, TRUNCATE_FUNCTION, sql.SQL("()"), "trigger", _TRUNCATE_BODY, definer=True)
            status.changed.append(f"{GUARD_SCHEMA}.{TRUNCATE_FUNCTION}")

        wanted_functions = set()
        for table in dictionary.org_tables():
            if table not in live.tables:
                status.missing.append(table)
                continue
            status.tables.append(table)
            fname = guard_function_name(table)
            wanted_functions.add(fname)
            body = _render(conn, guard_function_body(dictionary, live, table))
            target = qualified(table)
            if not _function_ok(functions, fname, body):
                _create_function(conn, fname, sql.SQL("()"), "trigger", body)
                status.changed.append(f"{GUARD_SCHEMA}.{fname}")
            if triggers.get((table, TRIGGER_NAME)) != (f"{GUARD_SCHEMA}.{fname}", _ROW_TGTYPE, "O"):
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(TRIGGER_NAME), target))
                conn.execute(sql.SQL(
                    "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
                ).format(sql.Identifier(TRIGGER_NAME), target, sql.Identifier(GUARD_SCHEMA, fname)))
                status.changed.append(f"{dotted(table)}.{TRIGGER_NAME}")
            expected_truncate = (f"{GUARD_SCHEMA}.{TRUNCATE_FUNCTION}", _TRUNCATE_TGTYPE, "O")
            if triggers.get((table, TRUNCATE_TRIGGER_NAME)) != expected_truncate:
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(TRUNCATE_TRIGGER_NAME), target))
                conn.execute(sql.SQL(
                    "CREATE TRIGGER {} BEFORE TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()"
                ).format(sql.Identifier(TRUNCATE_TRIGGER_NAME), target,
                         sql.Identifier(GUARD_SCHEMA, TRUNCATE_FUNCTION)))
                status.changed.append(f"{dotted(table)}.{TRUNCATE_TRIGGER_NAME}")

        guarded = set(status.tables)
        for (table, trigger) in sorted(triggers):
            if table not in guarded:
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(trigger), qualified(table)))
                status.removed.append(f"{dotted(table)}.{trigger}")
        for fname in sorted(functions):
            if fname.startswith(FUNCTION_PREFIX) and fname not in wanted_functions:
                if _function_in_use(conn, fname):
                    continue  # still used by a trigger in another schema's guard
                conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(GUARD_SCHEMA, fname)))
                status.removed.append(f"{GUARD_SCHEMA}.{fname}")
    return status


def _function_in_use(conn: psycopg.Connection, fname: str) -> bool:
    return conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                          JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                          WHERE n.nspname = %s AND p.proname = %s)""",
        (GUARD_SCHEMA, fname),
    ).fetchone()[0]


def guard_gaps(conn: psycopg.Connection, dictionary: Dictionary, live: LiveSchema) -> list[str]:
    """Organization tables whose guard is missing, disabled or out of date (empty: fully guarded)."""
    functions = _existing_functions(conn)
    triggers = _existing_triggers(conn)
    gaps = []
    if not _function_ok(functions, CHECK_FUNCTION, _CHECK_BODY, definer=True):
        gaps.append(f"{GUARD_SCHEMA}.{CHECK_FUNCTION}")
    for table in dictionary.org_tables():
        if table not in live.tables:
            continue
        fname = guard_function_name(table)
        body = _render(conn, guard_function_body(dictionary, live, table))
        if (not _function_ok(functions, fname, body)
                or triggers.get((table, TRIGGER_NAME)) != (f"{GUARD_SCHEMA}.{fname}", _ROW_TGTYPE, "O")):
            gaps.append(table)
    return gaps


def uninstall_guard(conn: psycopg.Connection, dictionary: Dictionary) -> list[str]:
    """Drop every guard trigger (on tables of every schema) and the guard functions; ``frozen_orgs`` is kept.

    Returns what was dropped. Tables of ``dictionary`` are covered even if the catalog lookup missed
    them (``DROP TRIGGER IF EXISTS``).
    """
    dropped: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        triggers = set(_existing_triggers(conn))
        present = {
            name for (name,) in conn.execute(
                sql.SQL("""SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n
                   ON n.oid = c.relnamespace WHERE {} AND c.relkind IN ('r', 'p')""").format(sql.SQL(APP_SCHEMAS_SQL)),
                ).fetchall()
        }
        for table in dictionary.org_tables():
            if table in present:
                triggers.update({(table, TRIGGER_NAME), (table, TRUNCATE_TRIGGER_NAME)})
        existing = _existing_triggers(conn)
        for table, trigger in sorted(triggers):
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), qualified(table)))
            if (table, trigger) in existing:
                dropped.append(f"{dotted(table)}.{trigger}")
        for fname in sorted(_existing_functions(conn)):
            is_ours = fname.startswith(FUNCTION_PREFIX) or fname == TRUNCATE_FUNCTION
            if is_ours and not _function_in_use(conn, fname):
                conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(GUARD_SCHEMA, fname)))
                dropped.append(f"{GUARD_SCHEMA}.{fname}")
    return dropped


def _frozen_table_missing() -> GuardNotInstalled:
    return GuardNotInstalled(
        "the freeze guard is not installed in this cell database (no migrator.frozen_orgs)",
        "run `migrator cells init` for this cell",
    )


def freeze_org(conn: psycopg.Connection, org: int, token: str) -> None:
    """Refuse writes to ``org``'s rows in this cell except with ``migrator.move_token = token``.

    Idempotent; freezing again with another token replaces the token (a re-fenced move).
    Commits unless the connection is already inside a transaction.
    """
    if not token:
        raise ValueError("a freeze needs a non-empty token")
    try:
        with conn.transaction():
            conn.execute(
                """INSERT INTO migrator.frozen_orgs AS f (organization_id, token) VALUES (%s, %s)
                   ON CONFLICT (organization_id) DO UPDATE SET token = EXCLUDED.token,
                       frozen_at = CASE WHEN f.token = EXCLUDED.token THEN f.frozen_at ELSE now() END""",
                (org, token),
            )
    except psycopg.errors.UndefinedTable:
        raise _frozen_table_missing() from None


def unfreeze_org(conn: psycopg.Connection, org: int) -> bool:
    """Lift the freeze of ``org`` in this cell; True if it was frozen."""
    try:
        with conn.transaction():
            cur = conn.execute("DELETE FROM migrator.frozen_orgs WHERE organization_id = %s", (org,))
            return cur.rowcount > 0
    except psycopg.errors.UndefinedTable:
        raise _frozen_table_missing() from None


def is_frozen(conn: psycopg.Connection, org: int) -> str | None:
    """The token of ``org``'s freeze in this cell, or None."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT token FROM migrator.frozen_orgs WHERE organization_id = %s", (org,)).fetchone()
    except psycopg.errors.UndefinedTable:
        raise _frozen_table_missing() from None
    return row[0] if row else None


def frozen_orgs(conn: psycopg.Connection) -> dict[int, str]:
    """Every organization frozen in this cell -> its token."""
    try:
        with conn.transaction():
            rows = conn.execute("SELECT organization_id, token FROM migrator.frozen_orgs ORDER BY 1").fetchall()
    except psycopg.errors.UndefinedTable:
        raise _frozen_table_missing() from None
    return {int(org): token for org, token in rows}


def set_move_token(conn: psycopg.Connection, token: str | None, *, local: bool = False) -> None:
    """Let this session (or, ``local``, this transaction) write to the organization frozen with ``token``."""
    conn.execute("SELECT pg_catalog.set_config(%s, %s, %s)", (MOVE_TOKEN_SETTING, token or "", local))
