"""The migrator's own schema in a cell (``migrator``): what it holds, and whether it is the migrator's.

A schema of that name holding objects the migrator did not create belongs to the application:
adoption stops there rather than mixing its objects with ours (docs/adr/0007-what-the-migrator-installs.md).
Used by provisioning (``cells init``) and by ``cells uninstall``.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from migrator.cells.guard import CHECK_FUNCTION, TRUNCATE_FUNCTION
from migrator.cells.introspect import MIGRATOR_SCHEMA
from migrator.errors import MigratorError

# The migrator's own relations in its schema (the freeze guard, the cell's identity, recorded sequence
# bounds, the online strategy's change capture). In a schema marked with NAMESPACE_COMMENT everything is
# the migrator's; these names only matter to recognize a schema created before the mark existed.
OWN_TABLES = ("frozen_orgs", "cell_info", "sequence_bounds", "captures", "change_log", "change_log_id_seq")
OWN_FUNCTION_PREFIXES = ("guard_", "capture_")
NAMESPACE_COMMENT = ("cells-migrator: the migrator's own objects in this cell (freeze guard, cell identity); "
                     "`migrator cells uninstall` removes them. See docs/adr/0007-what-the-migrator-installs.md")


def foreign_objects(conn: psycopg.Connection) -> list[str]:
    """Objects in schema ``migrator`` that the migrator did not create (empty when it is ours or absent)."""
    rows = conn.execute(
        """SELECT 'table ' || c.relname FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %(schema)s AND c.relkind NOT IN ('i', 'I', 't') AND NOT (c.relname = ANY(%(own)s))
           UNION ALL
           SELECT 'function ' || p.proname FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = %(schema)s
              AND NOT (p.proname = ANY(%(funcs)s) OR p.proname LIKE ANY(%(prefixes)s))
           UNION ALL
           SELECT 'type ' || t.typname FROM pg_catalog.pg_type t
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = %(schema)s AND t.typrelid = 0 AND t.typelem = 0
           ORDER BY 1""",
        {"schema": MIGRATOR_SCHEMA, "own": list(OWN_TABLES), "funcs": [CHECK_FUNCTION, TRUNCATE_FUNCTION],
         "prefixes": [p.replace("_", "\\_") + "%" for p in OWN_FUNCTION_PREFIXES]},
    ).fetchall()
    return [r[0] for r in rows]


def namespace_state(conn: psycopg.Connection) -> str:
    """``absent``, ``ours`` (marked, or holding only the migrator's objects) or ``foreign``."""
    row = conn.execute("SELECT pg_catalog.obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n "
                       "WHERE n.nspname = %s", (MIGRATOR_SCHEMA,)).fetchone()
    if row is None:
        return "absent"
    if row[0] == NAMESPACE_COMMENT or not foreign_objects(conn):
        return "ours"
    return "foreign"


def claim_namespace(conn: psycopg.Connection, cell: str) -> bool:
    """Create (or recognize) the migrator's schema in a cell; True if something changed.

    A schema named ``migrator`` that holds objects the migrator did not create belongs to the
    application: adoption stops there rather than mixing its objects with ours.
    """
    state = namespace_state(conn)
    if state == "foreign":
        listing = ", ".join(foreign_objects(conn)[:5])
        raise MigratorError(
            f"cell {cell!r} already has a schema {MIGRATOR_SCHEMA!r} holding objects the migrator did not create "
            f"({listing})",
            f"the migrator keeps everything it installs in schema {MIGRATOR_SCHEMA!r}; rename the application's "
            "schema before adopting this cell (see docs/adr/0007-what-the-migrator-installs.md)",
        )
    changed = state == "absent"
    if changed:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(MIGRATOR_SCHEMA)))
    comment = conn.execute("SELECT pg_catalog.obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n "
                           "WHERE n.nspname = %s", (MIGRATOR_SCHEMA,)).fetchone()[0]
    if comment != NAMESPACE_COMMENT:
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(MIGRATOR_SCHEMA),
                                                                  sql.Literal(NAMESPACE_COMMENT)))
        changed = True
    return changed
