"""The organization's primary keys, streamed from the source into a temporary table of the target.

Used where the target must be asked about exactly the source's rows, without trusting the target's
own sharding-key chains (a child copied before its parent is invisible to them): the preflight
collision check, and abort's removal of a partial copy.
"""

from __future__ import annotations

from psycopg import sql

from migrator.copy.spec import INDEX, INDEX_PATH_MAX_FRACTION, SCAN, TableSpec, org_scan, plan_for, table_rows


def keys_table(spec: TableSpec) -> str:
    return f"_migrator_keys_{spec.name}"[:63]


def load_source_keys(src, tgt, spec: TableSpec, org: int) -> tuple[sql.Identifier, int]:
    """Inside the target's current transaction: a temp table (dropped at commit) of the org's keys.

    Returns the table and how many keys it holds."""
    return load_source_columns(src, tgt, spec, org, spec.pk, keys_table(spec))


def load_source_columns(src, tgt, spec: TableSpec, org: int, columns, name: str) -> tuple[sql.Identifier, int]:
    """Inside the target's current transaction: a temp table ``name`` (dropped at commit) of ``columns``
    of the organization's source rows, streamed source -> target with COPY (binary: the cells' column
    types are equal, preflight compared them), never loaded into this process. Typed like the target's
    table. Returns the table and how many rows it holds."""
    keys = sql.Identifier(name)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    tgt.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
        keys, cols, spec.ident))
    with org_scan(src, spec, org) as s, src.cursor() as scur, tgt.cursor() as tcur:
        out_sql = sql.SQL("COPY (SELECT {} FROM {} AS t WHERE {}) TO STDOUT (FORMAT BINARY)").format(
            sql.SQL(", ").join(sql.Identifier("t", c) for c in columns), s.ident, s.predicate)
        with scur.copy(out_sql, {"org": org}) as out, \
                tcur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(keys)) as inp:
            for data in out:
                inp.write(data)
        count = tcur.rowcount
    tgt.execute(sql.SQL("ANALYZE {}").format(keys))
    return keys, count


def match_path(tgt, spec: TableSpec, count: int) -> str:
    """How to match ``count`` keys against the target's table: probe its primary-key index per key
    while they are a small share of it, else one hash join over the whole table."""
    return INDEX if count <= INDEX_PATH_MAX_FRACTION * max(table_rows(tgt, spec), 1.0) else SCAN


def _pk_match(spec: TableSpec, table: str = "t", keys: str = "k") -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(table, c), sql.Identifier(keys, c)) for c in spec.pk)


def collision_sql(spec: TableSpec, keys: sql.Identifier, limit: int) -> sql.Composable:
    """The first ``limit`` keys found in both. The join is fenced (``OFFSET 0``) from the ``ORDER BY …
    LIMIT``: planned for every key, it cannot become a walk of the target's key index that probes the
    key table once per row in the hope of stopping early (nothing collides, usually)."""
    cols = sql.SQL(", ").join(sql.Identifier("t", c) for c in spec.pk)
    return sql.SQL("SELECT {out} FROM (SELECT {cols} FROM {table} AS t JOIN {keys} AS k ON {match} OFFSET 0) AS c"
                   " ORDER BY {out} LIMIT {n}").format(
        out=sql.SQL(", ").join(sql.Identifier("c", c) for c in spec.pk), cols=cols, table=spec.ident, keys=keys,
        match=_pk_match(spec), n=sql.Literal(limit))


def colliding_keys(src, tgt, spec: TableSpec, org: int, limit: int = 5) -> list[tuple]:
    """Keys of the organization's source rows that already exist in the target.

    The plan is fixed by the keys' share of the target's table (``plan_for``): a few keys probe the
    target's primary-key index one by one (no sequential scan, no hash join), many are matched by
    one hash join (no nested loop). Left to itself, with ``LIMIT`` and the target's statistics not
    yet counting the rows an earlier move had just copied in, the planner walked the target's key
    index probing the unindexed key table for each key: quadratic when nothing collides (minutes for
    100k keys, docs/performance.md).
    """
    with tgt.transaction():
        keys, count = load_source_keys(src, tgt, spec, org)
        plan_for(tgt, match_path(tgt, spec, count))
        rows = tgt.execute(collision_sql(spec, keys, limit)).fetchall()
    return [tuple(r) for r in rows]


def delete_source_keys(src, tgt, spec: TableSpec, org: int) -> int:
    """Delete from the target every row whose key is one of the organization's source keys."""
    with tgt.transaction():
        tgt.execute("SET LOCAL session_replication_role = replica")
        keys, count = load_source_keys(src, tgt, spec, org)
        plan_for(tgt, match_path(tgt, spec, count))
        return tgt.execute(sql.SQL("DELETE FROM {table} AS t USING {keys} AS k WHERE {match}").format(
            table=spec.ident, keys=keys, match=_pk_match(spec))).rowcount
