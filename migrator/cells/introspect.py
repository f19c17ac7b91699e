"""What a cell database really contains: tables, columns, primary and foreign keys (catalog queries).

``introspect`` reads the application's tables of a cell, in every schema, into a :class:`LiveSchema`;
tables are named bare in ``public`` and qualified elsewhere (:mod:`migrator.cells.names`).
Partitions are folded into their partitioned parent (only the parent is listed, wherever its
partitions live), and the migrator's own schema ``migrator`` is never listed. ``LiveSchema.fingerprint`` and
``LiveSchema.diff`` compare two cells' schemas (preflight refuses a move between cells whose
schemas differ).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from migrator.cells.names import APP_SCHEMAS_SQL
from migrator.db import connection
from migrator.errors import SchemaMismatch

MIGRATOR_SCHEMA = "migrator"

# {schemas}: the schemas read; {not_extension}: tables of extensions outside ``public`` are theirs.
_TABLES = """
SELECT c.oid, CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END,
       c.relkind = 'p' AS partitioned
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE {schemas} AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND {not_extension}
ORDER BY 2
"""

# Partitions (at any depth, in any schema) and the partitioned table they are folded into.
_PARTITIONS = """
SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END,
       CASE WHEN rn.nspname = 'public' THEN r.relname ELSE rn.nspname || '.' || r.relname END
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_class r ON r.oid = pg_catalog.pg_partition_root(c.oid)
JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
WHERE c.relispartition AND c.relkind IN ('r', 'p')
"""

_NOT_EXTENSION = """(n.nspname = 'public' OR NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
       AND d.deptype = 'e'))"""

_COLUMNS = """
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated = 's', a.attidentity, a.attnum, a.atttypid, coalesce(co.collisdeterministic, true)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
WHERE {schemas} AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# conparentid = 0: skip the constraints PostgreSQL clones onto partitions.
_CONSTRAINTS = """
SELECT con.conrelid, con.contype, con.conname,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(num, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
             ORDER BY k.ord) AS columns,
       rn.nspname AS ref_schema,
       CASE WHEN rn.nspname = 'public' THEN rc.relname ELSE rn.nspname || '.' || rc.relname END AS ref_table,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(num, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
             ORDER BY k.ord) AS ref_columns
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
WHERE {schemas} AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND con.contype IN ('p', 'f') AND con.conparentid = 0
ORDER BY con.conrelid, con.conname
"""

_IDENTITY = {"a": "always", "d": "by default"}


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str  # format_type() text, e.g. "bigint", "character varying(255)"
    nullable: bool
    generated: bool = False  # GENERATED ALWAYS AS (...) STORED
    identity: str | None = None  # "always" / "by default"
    position: int = 0
    # Whether verify may hash the value itself (``hash_record_extended``): a built-in type whose hash
    # depends on the value alone (VALUE_HASHED_TYPES) without a nondeterministic collation (under
    # which 'A' and 'a' hash alike). Otherwise verify hashes its text form. Not in the fingerprint.
    hashable: bool = False


@dataclass(frozen=True)
class ForeignKeyInfo:
    columns: list[str]
    ref_table: str  # its name (migrator.cells.names: qualified outside ``public``)
    ref_columns: list[str]
    ref_schema: str | None = None
    name: str | None = None


@dataclass
class TableInfo:
    name: str
    columns: list[ColumnInfo] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[ForeignKeyInfo] = field(default_factory=list)
    partitioned: bool = False
    # Columns that lead a valid, non-partial index (so ``col = ANY(...)`` can be an index scan).
    # Not in the fingerprint: two cells may differ in indexes and still exchange rows.
    index_leads: set[str] = field(default_factory=set)

    def indexed(self, column: str) -> bool:
        return column in self.index_leads

    def column(self, name: str) -> ColumnInfo | None:
        return next((c for c in self.columns if c.name == name), None)

    def has_column(self, name: str) -> bool:
        return self.column(name) is not None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def insertable_columns(self) -> list[str]:
        """Columns a COPY/INSERT may write (generated columns excluded)."""
        return [c.name for c in self.columns if not c.generated]


@dataclass
class LiveSchema:
    schema: str = "public"  # the default schema (its tables are named bare); None read: every schema
    tables: dict[str, TableInfo] = field(default_factory=dict)  # by name (migrator.cells.names)
    # every partition, at any depth and in any schema -> the partitioned table it is folded into
    partitions: dict[str, str] = field(default_factory=dict)
    row_hash: bool = False  # the server has hash_record_extended (PostgreSQL 14+)

    def table(self, name: str) -> TableInfo:

        try:
            return self.tables[name]
        except KeyError:
            raise SchemaMismatch(
                f"table {name!r} does not exist in the cell", "run `migrator schema check`"
            ) from None

    def has_table(self, name: str) -> bool:
        return name in self.tables

    def foreign_key(self, table: str, column: str, ref_table: str) -> ForeignKeyInfo | None:
        """The foreign key of ``table`` that maps ``column`` into ``ref_table`` (single-column ones first)."""
        info = self.tables.get(table)
        if info is None:
            return None
        candidates = [
            fk for fk in info.foreign_keys
            if fk.ref_table == ref_table and column in fk.columns
        ]
        candidates.sort(key=lambda fk: (len(fk.columns), fk.name or ""))
        return candidates[0] if candidates else None

    def _describe(self, name: str) -> str:
        info = self.tables.get(name)
        if info is None:
            return f"{name}:absent"
        cols = ",".join(_column_text(c) for c in sorted(info.columns, key=lambda c: c.name))
        return f"{name}:pk({','.join(info.primary_key)}):{cols}"

    def fingerprint(self, tables: Iterable[str] | None = None) -> str:
        """A stable hash of the tables' columns (name, type, generated, identity) and primary keys.

        Column order is ignored.
        """
        names = sorted(set(tables) if tables is not None else set(self.tables))
        digest = hashlib.sha256()
        for name in names:
            digest.update(self._describe(name).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def diff(self, other: LiveSchema, tables: Iterable[str] | None = None,
             names: tuple[str, str] = ("this schema", "the other")) -> list[str]:
        """Human-readable differences between two schemas, restricted to ``tables`` if given."""
        return [message for _, _, message in self.diff_items(other, tables, names)]

    def diff_items(self, other: LiveSchema, tables: Iterable[str] | None = None,
                   names: tuple[str, str] = ("this schema", "the other")) -> list[tuple[str, str | None, str]]:
        """The differences as ``(table, column or None, message)``."""
        mine, theirs = names
        wanted = sorted(set(tables) if tables is not None else set(self.tables) | set(other.tables))
        out: list[tuple[str, str | None, str]] = []
        for name in wanted:
            a, b = self.tables.get(name), other.tables.get(name)
            if a is None and b is None:
                continue
            if a is None or b is None:
                present, absent = (theirs, mine) if a is None else (mine, theirs)
                out.append((name, None, f"table {name}: present in {present}, missing in {absent}"))
                continue
            acols = {c.name: c for c in a.columns}
            bcols = {c.name: c for c in b.columns}
            for col in sorted(set(acols) | set(bcols)):
                ca, cb = acols.get(col), bcols.get(col)
                if ca is None or cb is None:
                    present, absent = (theirs, mine) if ca is None else (mine, theirs)
                    out.append((name, col, f"column {name}.{col}: present in {present}, missing in {absent}"))
                elif ca.type != cb.type:
                    out.append((name, col, f"column {name}.{col}: type {ca.type} in {mine}, {cb.type} in {theirs}"))
                elif ca.generated != cb.generated:
                    where = mine if ca.generated else theirs
                    out.append((name, col, f"column {name}.{col}: generated in {where} only"))
                elif ca.identity != cb.identity:
                    out.append((name, col, f"column {name}.{col}: identity {ca.identity or 'none'} in {mine}, "
                                           f"{cb.identity or 'none'} in {theirs}"))
            if a.primary_key != b.primary_key:
                out.append((name, None, f"table {name}: primary key ({', '.join(a.primary_key)}) in {mine}, "
                                        f"({', '.join(b.primary_key)}) in {theirs}"))
        return out


# The first column of every valid, non-partial index (expression indexes have no column there).
_INDEX_LEADS = """
SELECT i.indrelid, a.attname
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE {schemas} AND i.indisvalid AND i.indpred IS NULL
"""


def _column_text(c: ColumnInfo) -> str:
    """A column as the fingerprint sees it (the suffixes only when set, so plain columns hash as before)."""
    text = f"{c.name} {c.type}"
    if c.generated:
        text += " generated"
    if c.identity:
        text += f" identity {c.identity}"
    return text


def _read(conn: psycopg.Connection, schema: str | None) -> LiveSchema:
    live = LiveSchema()
    if schema == MIGRATOR_SCHEMA:
        return live
    params = {"schema": schema}
    where = {"schemas": "n.nspname = %(schema)s" if schema else APP_SCHEMAS_SQL, "not_extension": _NOT_EXTENSION}
    by_oid: dict[int, TableInfo] = {}
    live.row_hash = conn.info.server_version >= 140000
    with conn.cursor() as cur:
        for oid, name, partitioned in cur.execute(_TABLES.format(**where), params).fetchall():
            by_oid[oid] = live.tables[name] = TableInfo(name=name, partitioned=partitioned)
        columns = [r for r in cur.execute(_COLUMNS.format(**where), params).fetchall() if r[0] in by_oid]
        hashable = value_hashed_types(conn, {r[7] for r in columns}) if live.row_hash else set()
        for oid, name, type_, notnull, generated, identity, pos, type_oid, deterministic in columns:
            by_oid[oid].columns.append(ColumnInfo(name, type_, not notnull, bool(generated),
                                                  _IDENTITY.get(identity or ""), pos,
                                                  hashable=deterministic and type_oid in hashable))
        constraints = cur.execute(_CONSTRAINTS.format(**where), params).fetchall()
        for oid, kind, conname, cols, ref_schema, ref_table, ref_cols in constraints:
            info = by_oid.get(oid)
            if info is None:
                continue
            if kind == "p":
                info.primary_key = list(cols)
            else:
                info.foreign_keys.append(ForeignKeyInfo(list(cols), ref_table, list(ref_cols), ref_schema, conname))
        for oid, column in cur.execute(_INDEX_LEADS.format(**where), params).fetchall():
            if oid in by_oid:
                by_oid[oid].index_leads.add(column)
        live.partitions = {part: root for part, root in cur.execute(_PARTITIONS).fetchall() if root in live.tables}
    return live


# Built-in types whose hash is a function of the value alone, identical in every database of any
# PostgreSQL 14+ server of the same byte order (hash partitioning relies on that). Not here: enums
# (their hash is the label's OID, which differs between databases), extension types (citext hashes
# case-insensitively), and types without an extended hash function (json, point, xml, money, bit…).
VALUE_HASHED_TYPES = frozenset({
    "int2", "int4", "int8", "numeric", "float4", "float8", "bool", "text", "varchar", "bpchar", "char", "name",
    "bytea", "uuid", "date", "time", "timetz", "timestamp", "timestamptz", "interval", "jsonb", "inet", "cidr",
    "macaddr", "macaddr8",
})

# Each column type's underlying built-in type: through domains and arrays (an array hashes its elements).
_BASE_TYPES = """
WITH RECURSIVE chain(top, oid, depth) AS (
    SELECT t.oid, t.oid, 0 FROM pg_catalog.pg_type t WHERE t.oid = ANY(%(types)s)
  UNION ALL
    SELECT c.top, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END, c.depth + 1
      FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid
     WHERE (t.typtype = 'd' OR (t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::regproc))
       AND c.depth < 16
)
SELECT DISTINCT ON (c.top) c.top, n.nspname, t.typname, t.typtype
  FROM chain c
  JOIN pg_catalog.pg_type t ON t.oid = c.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 ORDER BY c.top, c.depth DESC
"""


def value_hashed_types(conn: psycopg.Connection, type_oids: set[int]) -> set[int]:
    """The type OIDs among ``type_oids`` that verify may hash as values (see VALUE_HASHED_TYPES)."""
    if not type_oids:
        return set()
    rows = conn.execute(_BASE_TYPES, {"types": sorted(type_oids)}).fetchall()
    return {top for top, nsp, name, kind in rows
            if nsp == "pg_catalog" and kind == "b" and name in VALUE_HASHED_TYPES}


def introspect(conn_or_dsn: psycopg.Connection | str, schema: str | None = None) -> LiveSchema:
    """Read the application's tables (every schema but the system's and ``migrator``; only ``schema``
    if given) of a database (a psycopg connection or a DSN) into a :class:`LiveSchema`, named as
    :mod:`migrator.cells.names` names them."""
    if isinstance(conn_or_dsn, str):
        with connection(conn_or_dsn, what="database", autocommit=True) as conn:
            return _read(conn, schema)
    return _read(conn_or_dsn, schema)
