"""The organization's primary keys, streamed from the source into a temporary table of the target.

Used where the target must be asked about exactly the source's rows, without trusting the target's
own sharding-key chains (a child copied before its parent is invisible to them): the preflight
collision check, and abort's removal of a partial copy.
"""

from __future__ import annotations

from psycopg import sql

from migrator.copy.spec import TableSpec


def keys_table(spec: TableSpec) -> str:
    return f"_migrator_keys_{spec.name}"[:63]


def load_source_keys(src, tgt, spec: TableSpec, org: int) -> sql.Identifier:
    """Inside the target's current transaction: a temp table (dropped at commit) of the org's keys."""
    keys = sql.Identifier(keys_table(spec))
    tgt.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
        keys, spec.pk_cols(None), spec.ident))
    with src.cursor() as scur, tgt.cursor() as tcur:
        out_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(spec.pk_select())
        with scur.copy(out_sql, {"org": org}) as out, \
                tcur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(keys)) as inp:
            for data in out:
                inp.write(data)
    return keys


def _pk_match(spec: TableSpec) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(spec.name, c), sql.Identifier(keys_table(spec), c)) for c in spec.pk)


def colliding_keys(src, tgt, spec: TableSpec, org: int, limit: int = 5) -> list[tuple]:
    """Keys of the organization's source rows that already exist in the target."""
    with tgt.transaction():
        keys = load_source_keys(src, tgt, spec, org)
        rows = tgt.execute(sql.SQL(
            "SELECT {cols} FROM {table} JOIN {keys} ON {match} ORDER BY {cols} LIMIT {n}"
        ).format(cols=sql.SQL(", ").join(sql.Identifier(spec.name, c) for c in spec.pk), table=spec.ident,
                 keys=keys, match=_pk_match(spec), n=sql.Literal(limit))).fetchall()
    return [tuple(r) for r in rows]


def delete_source_keys(src, tgt, spec: TableSpec, org: int) -> int:
    """Delete from the target every row whose key is one of the organization's source keys."""
    with tgt.transaction():
        tgt.execute("SET LOCAL session_replication_role = replica")
        keys = load_source_keys(src, tgt, spec, org)
        return tgt.execute(sql.SQL("DELETE FROM {table} USING {keys} WHERE {match}").format(
            table=spec.ident, keys=keys, match=_pk_match(spec))).rowcount
