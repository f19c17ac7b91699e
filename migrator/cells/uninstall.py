"""``migrator cells uninstall``: remove from a cell everything the migrator installed there.

Everything the migrator installs lives in its own schema ``migrator`` (docs/adr/0007-what-the-
migrator-installs.md): ``frozen_orgs``, ``cell_info``, ``sequence_bounds``, the change capture's
tables, the guard and capture functions. The only objects outside it are the triggers on the
application's organization tables and the DDL watch's event trigger, and every one of them calls a
function of that schema. So
uninstalling is, in one transaction:

1. refuse while an organization is frozen or captured in the cell (a move is running, or a moved
   organization's source copy awaits cleanup) unless ``force``: without the guard, writes to it
   would no longer be refused;
2. drop every trigger and event trigger (the capture's DDL watch) whose function lives in schema
   ``migrator``;
3. give the sequences ``cells init --set-sequences`` moved into the cell's ID range their recorded
   bounds back (their position stays: IDs handed out meanwhile are never handed out twice);
4. refuse if anything of the application depends on an object of the schema (a view over
   ``migrator.frozen_orgs``, say), or if the schema holds a table, view or sequence the migrator does
   not know (``OWN_TABLES`` in provision.py; unless ``force``): it would be dropped with it;
5. ``DROP SCHEMA migrator CASCADE`` (functions and types in it need no list: they hold no data).

The application's tables and rows are never touched, so an adopted cell is left exactly as it was
before adoption. A schema ``migrator`` that is not the migrator's is never touched. Running it twice
is harmless.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from migrator.cells.introspect import MIGRATOR_SCHEMA
from migrator.cells.namespace import OWN_TABLES, namespace_state
from migrator.cells.sequences import restore_sequence_bounds
from migrator.errors import MigratorError

_INIT_LOCK = 0x6D67696E69740000  # the same lock as `cells init`: never both at once on one cell

# Triggers anywhere in the database that call a function of the migrator's schema.
_OUR_TRIGGERS = """
SELECT n.nspname, c.relname, t.tgname
  FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
 WHERE pn.nspname = %(schema)s AND NOT t.tgisinternal AND t.tgparentid = 0
 ORDER BY 1, 2, 3
"""

# Event triggers (the capture's DDL watch) whose function lives in the migrator's schema.
_OUR_EVENT_TRIGGERS = """
SELECT e.evtname FROM pg_catalog.pg_event_trigger e
  JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
 WHERE pn.nspname = %(schema)s
 ORDER BY 1
"""

# Objects outside the schema that depend on an object inside it (they would go with a CASCADE).
_DEPENDENTS = """
WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s),
inside AS (
    SELECT 'pg_catalog.pg_class'::regclass AS classid, c.oid AS objid
      FROM pg_catalog.pg_class c JOIN ns ON c.relnamespace = ns.oid
    UNION ALL
    SELECT 'pg_catalog.pg_proc'::regclass, p.oid FROM pg_catalog.pg_proc p JOIN ns ON p.pronamespace = ns.oid
    UNION ALL
    SELECT 'pg_catalog.pg_type'::regclass, t.oid FROM pg_catalog.pg_type t JOIN ns ON t.typnamespace = ns.oid
),
-- parts of objects inside (constraints, defaults, triggers, rules of its tables) are inside too
parts AS (
    SELECT 'pg_catalog.pg_constraint'::regclass AS classid, con.oid AS objid
      FROM pg_catalog.pg_constraint con JOIN inside i ON i.objid = con.conrelid OR i.objid = con.contypid
    UNION ALL
    SELECT 'pg_catalog.pg_attrdef'::regclass, ad.oid
      FROM pg_catalog.pg_attrdef ad JOIN inside i ON i.objid = ad.adrelid
    UNION ALL
    SELECT 'pg_catalog.pg_trigger'::regclass, tg.oid
      FROM pg_catalog.pg_trigger tg JOIN inside i ON i.objid = tg.tgrelid
    UNION ALL
    SELECT 'pg_catalog.pg_rewrite'::regclass, rw.oid
      FROM pg_catalog.pg_rewrite rw JOIN inside i ON i.objid = rw.ev_class
)
SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_catalog.pg_depend d
  JOIN inside i ON d.refclassid = i.classid AND d.refobjid = i.objid
 WHERE d.deptype = 'n'
   AND NOT EXISTS (SELECT 1 FROM inside j WHERE j.classid = d.classid AND j.objid = d.objid)
   AND NOT EXISTS (SELECT 1 FROM parts j WHERE j.classid = d.classid AND j.objid = d.objid)
 ORDER BY 1
"""


def _rows(conn: psycopg.Connection, table: str, column: str) -> list:
    if not conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
                        (f"{MIGRATOR_SCHEMA}.{table}",)).fetchone()[0]:
        return []
    return [r[0] for r in conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
        sql.Identifier(column), sql.Identifier(MIGRATOR_SCHEMA, table)))]


def _unknown_relations(conn: psycopg.Connection) -> list[str]:
    """Tables, views and sequences in the schema that are not the migrator's own (nor owned by them)."""
    rows = conn.execute(
        """SELECT c.relname FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
              AND NOT (c.relname = ANY(%(own)s))
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class o ON o.oid = d.refobjid
                               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                                 AND d.deptype IN ('a', 'i') AND o.relnamespace = n.oid
                                 AND o.relname = ANY(%(own)s))
            ORDER BY 1""", {"s": MIGRATOR_SCHEMA, "own": list(OWN_TABLES)}).fetchall()
    return [r[0] for r in rows]


def uninstall_cell(conn: psycopg.Connection, dictionary=None, *, cell: str = "", schema: str | None = None,
                   force: bool = False) -> dict:
    """Remove the triggers and the ``migrator`` schema from one cell database; returns what was done.

    ``dictionary`` is not needed (the catalog says what is ours); it is accepted for symmetry with
    ``install_guard``.
    """
    where = f"cell {cell!r}" if cell else "this cell"
    result: dict = {"frozen_organizations": [], "captured_organizations": [], "sequences_restored": [],
                    "removed": []}
    with conn.transaction():
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        if namespace_state(conn) != "ours":
            return result  # nothing of ours here (no schema, or the application's own: never touched)
        frozen = [int(o) for o in _rows(conn, "frozen_orgs", "organization_id")]
        captured = [int(o) for o in _rows(conn, "captures", "organization_id")]
        result["frozen_organizations"], result["captured_organizations"] = frozen, captured
        busy = sorted(set(frozen) | set(captured))
        if busy and not force:
            shown = ", ".join(map(str, busy[:10])) + (" …" if len(busy) > 10 else "")
            raise MigratorError(
                f"{where}: organizations frozen or captured for a move: {shown}; removing the guard would let "
                "writes to them through",
                "finish or abort those moves (and clean up completed ones) first, see `migrator status`; "
                "--force removes everything anyway",
            )
        for nsp, table, trigger in conn.execute(_OUR_TRIGGERS, {"schema": MIGRATOR_SCHEMA}).fetchall():
            conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger),
                                                                 sql.Identifier(nsp, table)))
            result["removed"].append(f"trigger {trigger} on {nsp}.{table}")
        for (event_trigger,) in conn.execute(_OUR_EVENT_TRIGGERS, {"schema": MIGRATOR_SCHEMA}).fetchall():
            conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(event_trigger)))
            result["removed"].append(f"event trigger {event_trigger}")
        result["sequences_restored"] = restore_sequence_bounds(conn, schema)
        dependents = [r[0] for r in conn.execute(_DEPENDENTS, {"schema": MIGRATOR_SCHEMA}).fetchall()]
        if dependents:
            raise MigratorError(
                f"{where}: objects of the application depend on the migrator's schema: "
                + ", ".join(dependents[:5]) + (" …" if len(dependents) > 5 else ""),
                "they would be dropped with it; remove those dependencies, then run `migrator cells uninstall` "
                "again (nothing was removed)",
            )
        unknown = _unknown_relations(conn)
        if unknown and not force:
            raise MigratorError(
                f"{where}: schema {MIGRATOR_SCHEMA!r} holds relations the migrator does not know: "
                + ", ".join(unknown[:5]) + "; they would be dropped with it",
                "move them out of the schema (or drop them), or pass --force; nothing was removed",
            )
        inside = conn.execute(
            """SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')""",
            {"s": MIGRATOR_SCHEMA}).fetchone()[0]
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(MIGRATOR_SCHEMA)))
        result["removed"].append(f"schema {MIGRATOR_SCHEMA} ({inside} relations and its functions)")
    return result
