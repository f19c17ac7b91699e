"""Unique keys of the organization's rows that other rows of the target already hold (preflight).

The primary-key check (:mod:`migrator.copy.keys`) finds the organization's own rows in the target.
This one finds *other* rows (another organization's, usually) holding the same values under a unique
constraint or unique index of the target: the same ``tenants.slug``, the same ``(project_id, iid)``.
Without it the copy would fail mid-way on a unique violation.

For each organization table, the columns the target's unique indexes read (key columns, and the
columns of their expressions and predicates, from ``pg_depend``) are streamed from the source into
one temporary table of the target (the machinery of the primary-key check, ``load_source_columns``).
Each index is then probed once: its key expressions and its predicate, as the target's catalog
deparses them, are evaluated on the target over those rows, and matched against the target's table
with the same expressions, so the planner can use the index itself (per key while the organization
is a small share of the table, else one hash join, as for primary keys). Nothing is read row by row.

An index is skipped, with the reason, when the target cannot evaluate it over the copied columns
(an expression over the whole row, say) or when it belongs to one partition only (a row's partition
is decided by the partitioned table; probing one partition with every row would report rows that
land elsewhere).

Expressions and predicates are SQL text: PostgreSQL's own deparse of the index (``pg_get_indexdef``,
``pg_get_expr``), the only form in which the catalog gives them; nothing comes from a user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from migrator.cells.names import TableName
from migrator.copy.keys import load_source_columns, match_path
from migrator.copy.spec import TableSpec, plan_for

_UNIQUE_INDEXES = """
SELECT ic.relname, con.conname, pg_catalog.pg_get_expr(i.indpred, i.indrelid, true),
       ARRAY(SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k, true)
               FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k) AS keys,
       ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = i.indrelid AND a.attnum > 0 AND NOT a.attisdropped
                AND (a.attnum = ANY (i.indkey::int2[])
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = i.indexrelid
                                   AND d.refclassid = 'pg_catalog.pg_class'::regclass
                                   AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))
              ORDER BY a.attnum) AS columns,
       {nulls_not_distinct}
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                                     AND con.contype = 'u'
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND i.indisunique AND NOT i.indisprimary AND i.indislive
ORDER BY ic.relname
"""

# Unique indexes of a partitioned table's partitions that are not part of an index of the table itself.
_PARTITION_ONLY = """
SELECT CASE WHEN pn.nspname = 'public' THEN pc.relname ELSE pn.nspname || '.' || pc.relname END, ic.relname
FROM pg_catalog.pg_partition_tree(to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))) AS p
JOIN pg_catalog.pg_class pc ON pc.oid = p.relid
JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
JOIN pg_catalog.pg_index i ON i.indrelid = p.relid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
WHERE p.level > 0 AND i.indisunique AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid)
ORDER BY pc.relname, ic.relname
"""


@dataclass(frozen=True)
class UniqueIndex:
    table: str
    name: str  # the index
    constraint: str | None  # the UNIQUE constraint it enforces, if any
    keys: tuple[str, ...]  # key columns / expressions, deparsed by the target
    columns: tuple[str, ...]  # table columns the keys and the predicate read
    predicate: str | None  # partial index: its WHERE, deparsed
    nulls_not_distinct: bool = False

    @property
    def label(self) -> str:
        """``unique constraint tenants_slug_key (slug)``, ``unique index x (lower(email)) WHERE …``."""
        what = f"unique constraint {self.constraint}" if self.constraint else f"unique index {self.name}"
        text = f"{what} ({', '.join(self.keys)})"
        return f"{text} WHERE {self.predicate}" if self.predicate else text


@dataclass(frozen=True)
class UniqueConflict:
    index: UniqueIndex
    values: list[tuple[str | None, ...]]  # the first conflicting key values, as text
    # the values repeat among the organization's own rows (the target has an index the source lacks)
    within: bool = False

    @property
    def message(self) -> str:
        shown = ", ".join("(" + ", ".join("NULL" if v is None else v for v in vals) + ")" for vals in self.values)
        if self.within:
            return (f"{self.index.table}: {self.index.label} = {shown}, repeated among the organization's own rows "
                    "(the source has no such unique index)")
        return f"{self.index.table}: {self.index.label} = {shown}"


@dataclass
class UniqueCheck:
    conflicts: list[UniqueConflict] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # "table.index"
    skipped: list[dict] = field(default_factory=list)  # {"table", "index", "reason"}

    def as_dict(self) -> dict:
        return {"checked": len(self.checked), "skipped": self.skipped}


def unique_indexes(conn, table: str) -> tuple[list[UniqueIndex], list[dict]]:
    """The unique indexes of ``table`` other than its primary key, and those skipped (with a reason)."""
    nnd = "i.indnullsnotdistinct" if conn.info.server_version >= 150000 else "false"
    schema, relname = TableName.parse(table)
    params = {"schema": schema, "table": relname}
    found = [UniqueIndex(table, name, con, tuple(keys), tuple(cols), pred, bool(nulls))
             for name, con, pred, keys, cols, nulls in conn.execute(
                 _UNIQUE_INDEXES.format(nulls_not_distinct=nnd), params).fetchall()]
    skipped = [{"table": table, "index": index,
                "reason": f"a unique index of partition {part} alone (not of {table}): rows are routed to "
                          "partitions by the partitioned table, so it is not checked before the copy"}
               for part, index in conn.execute(_PARTITION_ONLY, params).fetchall()]
    return found, skipped


def _key_name(i: int) -> sql.Identifier:
    return sql.Identifier(f"_migrator_k{i}")


def probe_sql(spec: TableSpec, index: UniqueIndex, rows: sql.Identifier, limit: int) -> sql.Composable:
    """The first ``limit`` key values of ``index`` computed over ``rows`` (the organization's rows, in a
    temp table) that a row of the target's table already holds.

    The keys are computed in a subquery over ``rows`` alone and the target's table is probed in
    ``EXISTS`` over the table alone, so the deparsed, unqualified expressions read the right columns
    on each side; the probe repeats the index's expressions and predicate, so the index can answer it.
    The semi-join is fenced (``OFFSET 0``) from the ``ORDER BY … LIMIT`` like the primary-key check's.
    """
    pred = sql.SQL(" WHERE ({})").format(sql.SQL(index.predicate)) if index.predicate else sql.SQL("")
    keys = sql.SQL(", ").join(sql.SQL("({}) AS {}").format(sql.SQL(k), _key_name(i)) for i, k in enumerate(index.keys))
    # NULLS NOT DISTINCT: NULL matches NULL, spelled so the index still answers both arms (a bitmap OR of
    # "= value" and "IS NULL"; IS NOT DISTINCT FROM is no index condition)
    eq = "({k}) = {v} OR (({k}) IS NULL AND {v} IS NULL)" if index.nulls_not_distinct else "({k}) = {v}"
    match = [sql.SQL("(" + eq + ")").format(k=sql.SQL(k), v=sql.Identifier("_migrator_s", f"_migrator_k{i}"))
             for i, k in enumerate(index.keys)]
    if index.predicate:
        match.append(sql.SQL("({})").format(sql.SQL(index.predicate)))
    out = sql.SQL(", ").join(sql.Identifier("_migrator_c", f"_migrator_k{i}") for i in range(len(index.keys)))
    as_text = sql.SQL(", ").join(sql.SQL("CAST({} AS text)").format(sql.Identifier("_migrator_c", f"_migrator_k{i}"))
                                 for i in range(len(index.keys)))
    return sql.SQL(
        "SELECT {as_text} FROM (SELECT * FROM (SELECT {keys} FROM {rows}{pred} OFFSET 0) AS _migrator_s"
        " WHERE EXISTS (SELECT FROM {table} WHERE {match}) OFFSET 0) AS _migrator_c ORDER BY {out} LIMIT {n}"
    ).format(as_text=as_text, keys=keys, rows=rows, pred=pred, table=spec.ident,
             match=sql.SQL(" AND ").join(match), out=out, n=sql.Literal(limit))


def repeats_sql(index: UniqueIndex, rows: sql.Identifier, limit: int) -> sql.Composable:
    """The first ``limit`` key values of ``index`` that two of ``rows`` share: possible only where the
    source lacks the target's index (cells may differ in indexes; the schema fingerprint compares
    columns and keys). Keys with a NULL never repeat under a default (NULLS DISTINCT) index."""
    keys = sql.SQL(", ").join(sql.SQL("({}) AS {}").format(sql.SQL(k), _key_name(i)) for i, k in enumerate(index.keys))
    out = sql.SQL(", ").join(_key_name(i) for i in range(len(index.keys)))
    conds = [sql.SQL("({})").format(sql.SQL(index.predicate))] if index.predicate else []
    if not index.nulls_not_distinct:
        conds += [sql.SQL("({}) IS NOT NULL").format(sql.SQL(k)) for k in index.keys]
    where = sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(conds)) if conds else sql.SQL("")
    as_text = sql.SQL(", ").join(sql.SQL("CAST({} AS text)").format(_key_name(i)) for i in range(len(index.keys)))
    return sql.SQL("SELECT {as_text} FROM (SELECT {keys} FROM {rows}{where}) AS _migrator_s GROUP BY {out}"
                   " HAVING count(*) > 1 ORDER BY {out} LIMIT {n}").format(
        as_text=as_text, keys=keys, rows=rows, where=where, out=out, n=sql.Literal(limit))


def unique_conflicts(src, tgt, spec: TableSpec, org: int, check: UniqueCheck, *, limit: int = 5) -> None:
    """Probe every unique index of ``spec``'s table in the target with the organization's source rows;
    adds to ``check`` what conflicts, what was checked and what was skipped."""
    indexes, skipped = unique_indexes(tgt, spec.name)
    check.skipped.extend(skipped)
    if not indexes:
        return
    columns = sorted({c for ix in indexes for c in ix.columns})
    with tgt.transaction():
        rows, count = load_source_columns(src, tgt, spec, org, columns, f"_migrator_uniq_{spec.name}"[:63])
        if not count:
            check.checked.extend(f"{spec.name}.{ix.name}" for ix in indexes)
            return
        plan_for(tgt, match_path(tgt, spec, count))
        for ix in indexes:
            try:
                with tgt.transaction():  # a savepoint: an expression the target cannot evaluate here
                    found = tgt.execute(probe_sql(spec, ix, rows, limit)).fetchall()
                    repeated = tgt.execute(repeats_sql(ix, rows, limit)).fetchall()
            except (psycopg.errors.ProgrammingError, psycopg.errors.DataError) as exc:
                reason = (exc.diag.message_primary or str(exc)).strip()
                check.skipped.append({"table": spec.name, "index": ix.name,
                                      "reason": f"the target cannot evaluate it over the copied columns: {reason}"})
                continue
            check.checked.append(f"{spec.name}.{ix.name}")
            if found:
                check.conflicts.append(UniqueConflict(ix, [tuple(r) for r in found]))
            if repeated:
                check.conflicts.append(UniqueConflict(ix, [tuple(r) for r in repeated], within=True))
