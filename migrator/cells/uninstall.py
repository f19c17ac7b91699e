"""``migrator cells uninstall``: remove from a cell everything the migrator installed there.

That is (docs/adr/0007-what-the-migrator-installs.md): the freeze guard's triggers on the
application's tables, and the schema ``migrator`` with everything in it (``frozen_orgs``,
``cell_info``, ``sequence_bounds``, the guard functions). Sequences that ``cells init
--set-sequences`` moved into the cell's ID range get their recorded bounds back (their position
stays: IDs handed out meanwhile are never handed out twice). The application's tables and rows are
never touched, so an adopted cell is left exactly as it was before adoption.

Refused while an organization is frozen in the cell (a move is running, or a moved organization's
source copy awaits cleanup) unless ``force``: without the guard such writes would no longer be
refused. Running it twice is harmless.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from migrator.cells.guard import CHECK_FUNCTION, GUARD_SCHEMA, uninstall_guard
from migrator.cells.introspect import MIGRATOR_SCHEMA
from migrator.cells.sequences import restore_sequence_bounds
from migrator.errors import MigratorError

_INIT_LOCK = 0x6D67696E69740000  # the same lock as `cells init`: never both at once on one cell


def _frozen(conn: psycopg.Connection) -> list[int]:
    if not conn.execute("SELECT pg_catalog.to_regclass('migrator.frozen_orgs') IS NOT NULL").fetchone()[0]:
        return []
    return [int(r[0]) for r in conn.execute("SELECT organization_id FROM migrator.frozen_orgs ORDER BY 1")]


def uninstall_cell(conn: psycopg.Connection, dictionary=None, *, cell: str = "", schema: str = "public",
                   force: bool = False) -> dict:
    """Remove the guard and the ``migrator`` schema from one cell database; returns what was done."""
    from migrator.cells.provision import foreign_objects, namespace_state

    where = f"cell {cell!r}" if cell else "this cell"
    result: dict = {"frozen_organizations": [], "sequences_restored": [], "removed": []}
    with conn.transaction():
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        state = namespace_state(conn)
        frozen = _frozen(conn) if state == "ours" else []
        result["frozen_organizations"] = frozen
        if frozen and not force:
            shown = ", ".join(map(str, frozen[:10])) + (" …" if len(frozen) > 10 else "")
            raise MigratorError(
                f"{where}: organizations frozen for a move: {shown}; removing the guard would let writes "
                "to them through",
                "finish or abort those moves (and clean up completed ones) first, see `migrator status`; "
                "--force removes everything anyway",
            )
        if state != "ours":
            return result  # no schema of ours here (absent, or the application's own: never touched)
        try:
            _remove(conn, dictionary, schema, result)
        except psycopg.errors.DependentObjectsStillExist as exc:
            detail = (exc.diag.message_detail or str(exc)).splitlines()[0]
            raise MigratorError(
                f"{where}: the migrator's objects cannot be dropped: {detail}",
                "something of the application depends on them; remove that dependency, then run "
                "`migrator cells uninstall` again (nothing was removed)",
            ) from None
        leftover = foreign_objects(conn)
        if leftover:
            raise MigratorError(
                f"{where}: schema {MIGRATOR_SCHEMA!r} holds objects the migrator did not create: "
                + ", ".join(leftover[:5]),
                "move or drop them, then run `migrator cells uninstall` again (nothing was removed)",
            )
        conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(MIGRATOR_SCHEMA)))
        result["removed"].append(f"schema {MIGRATOR_SCHEMA}")
    return result


def _remove(conn: psycopg.Connection, dictionary, schema: str, result: dict) -> None:
    from migrator.cells.provision import OWN_TABLES

    result["removed"] += uninstall_guard(conn, dictionary or _NoTables(), schema)
    result["sequences_restored"] = restore_sequence_bounds(conn, schema)
    check = conn.execute(
        """SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = %s AND p.proname = %s""", (GUARD_SCHEMA, CHECK_FUNCTION)).fetchall()
    for (signature,) in check:
        conn.execute(sql.SQL("DROP FUNCTION {}").format(sql.SQL(signature)))  # regprocedure text is quoted
        result["removed"].append(signature)
    for table in OWN_TABLES:
        if conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
                        (sql.Identifier(MIGRATOR_SCHEMA, table).as_string(conn),)).fetchone()[0]:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(MIGRATOR_SCHEMA, table)))
            result["removed"].append(f"{MIGRATOR_SCHEMA}.{table}")


class _NoTables:
    """A stand-in dictionary with no tables (uninstall finds our triggers by name in the catalog)."""

    def org_tables(self) -> list[str]:
        return []
