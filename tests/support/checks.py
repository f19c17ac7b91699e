"""Invariant checks shared by the integration and fault tests."""

from __future__ import annotations

import psycopg
from psycopg import sql

from migrator.cells.introspect import introspect
from migrator.cells.names import qualified
from migrator.copy.spec import stabilize_session, table_specs
from migrator.dictionary import load_dictionary
from migrator.verify.checksums import range_checksum


def org_checksums(settings, cell: str, org: int) -> dict[str, tuple[int, str]]:
    """Per organization-scoped table: (rows, checksum) of the organization's rows in a cell."""
    dictionary = load_dictionary(settings.dictionary_file())
    with psycopg.connect(settings.cell(cell).dsn, autocommit=True) as conn:
        stabilize_session(conn)
        specs = table_specs(dictionary, introspect(conn))
        out = {}
        for name, spec in specs.items():
            c = range_checksum(conn, spec, org, None, None)
            out[name] = (c.rows, c.checksum)
        return out


def leftover_keys(settings, source: str, target: str, org: int) -> dict[str, list]:
    """Per table: keys of the organization's source rows that exist in the target (after an abort: none)."""
    from migrator.copy.keys import colliding_keys

    dictionary = load_dictionary(settings.dictionary_file())
    out = {}
    with psycopg.connect(settings.cell(source).dsn, autocommit=True) as src, \
            psycopg.connect(settings.cell(target).dsn, autocommit=True) as tgt:
        specs = table_specs(dictionary, introspect(src))
        for name, spec in specs.items():
            hits = colliding_keys(src, tgt, spec, org)
            if hits:
                out[name] = hits
    return out


def duplicate_keys(settings, cell: str) -> dict[str, int]:
    """Tables with duplicated primary keys (must be empty: a PK makes this impossible, but we check)."""
    dictionary = load_dictionary(settings.dictionary_file())
    out = {}
    with psycopg.connect(settings.cell(cell).dsn, autocommit=True) as conn:
        live = introspect(conn)
        for name in dictionary.org_tables():
            pk = sql.SQL(", ").join(sql.Identifier(c) for c in live.tables[name].primary_key)
            n = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT {pk} FROM {t} GROUP BY {pk} HAVING count(*) > 1) d")
                             .format(pk=pk, t=qualified(name))).fetchone()[0]
            if n:
                out[name] = n
    return out
