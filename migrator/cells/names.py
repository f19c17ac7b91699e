"""Table names in any schema: one spelling in the dictionary, the live schema and every plan, one way to SQL.

A table of the default schema ``public`` is named bare (``orders``), a table of any other schema is
qualified (``gitlab_partitions_dynamic.ci_builds_101``); that text is the table's name everywhere
(dictionary entries and sharding keys, ``LiveSchema.tables``, plans, checkpoints, change logs).
Turned into SQL only by :func:`qualified` (``psycopg.sql.Identifier(schema, table)``), never by
string formatting. A table whose own name contains a dot cannot be named this way (docs/dictionary.md).
"""

from __future__ import annotations

from typing import NamedTuple

from psycopg import sql

DEFAULT_SCHEMA = "public"
MIGRATOR_SCHEMA = "migrator"

# The application's schemas (``n`` is pg_namespace): all but the system's and the migrator's own.
APP_SCHEMAS_SQL = "(n.nspname NOT IN ('migrator', 'information_schema') AND n.nspname !~ '^pg_')"


# Catalog queries spell a table's name as :func:`table_name` does:
#   CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END


class TableName(NamedTuple):
    schema: str
    table: str

    @classmethod
    def parse(cls, name: str) -> TableName:
        schema, dot, table = name.partition(".")
        return cls(schema, table) if dot else cls(DEFAULT_SCHEMA, name)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    def __str__(self) -> str:
        return table_name(self.schema, self.table)


def table_name(schema: str, table: str) -> str:
    """The name of ``schema.table``: bare in ``public``, qualified elsewhere."""
    return table if schema == DEFAULT_SCHEMA else f"{schema}.{table}"


def qualified(name: str) -> sql.Identifier:
    """The SQL identifier of the table named ``name`` (``"schema"."table"``)."""
    return TableName.parse(name).ident


def dotted(name: str) -> str:
    """``schema.table`` always (``public.orders``), for messages that always named the schema."""
    schema, table = TableName.parse(name)
    return f"{schema}.{table}"


def regclass_text(name: str, conn) -> str:
    """``name`` as text ``::regclass`` / ``to_regclass`` read (quoted: any spelling survives)."""
    return qualified(name).as_string(conn)
