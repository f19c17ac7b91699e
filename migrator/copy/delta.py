"""Applying captured changes (online moves): re-sync every logged key from the source's current rows.

One round takes the log entries of a capture (and unattributed ones) that committed between two source
snapshots (``prev``: the last round's position, ``cur``: this round's; see ``cells.capture.PENDING_ENTRIES``),
and in one target transaction:
1. loads the logged keys of each table into temporary tables of the target (streamed, binary COPY);
2. deletes the target rows with those keys that belong to the organization (children first, while
   their parents still resolve the organization), and the target rows whose keys the source's
   current rows of the organization carry;
3. copies the source's current rows of the organization with those keys (parents first).
A key replayed twice, or a round re-run after a crash, gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from migrator.cells.capture import PENDING_ENTRIES
from migrator.copy.spec import TableSpec


@dataclass
class RoundResult:
    keys: dict[str, int] = field(default_factory=dict)
    deleted: int = 0
    copied: int = 0

    @property
    def total_keys(self) -> int:
        return sum(self.keys.values())


def logged_keys_sql(spec: TableSpec) -> sql.Composable:
    """The distinct logged keys of one table, typed like the table's primary key."""
    cols = sql.SQL(", ").join(
        sql.SQL("CAST(c.pk ->> {} AS {}) AS {}").format(sql.Literal(i), sql.SQL(t), sql.Identifier(c))
        for i, (c, t) in enumerate(zip(spec.pk, spec.pk_types, strict=True)))
    return sql.SQL("SELECT DISTINCT {} FROM migrator.change_log AS c WHERE c.table_name = %(tbl)s AND {}").format(
        cols, sql.SQL(PENDING_ENTRIES))


def _key_temp(spec: TableSpec) -> sql.Identifier:
    return sql.Identifier(f"_migrator_delta_{spec.name}"[:63])


def _match(spec: TableSpec, alias: str, temp: sql.Identifier) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(sql.Identifier(alias), sql.Identifier(c), temp, sql.Identifier(c))
        for c in spec.pk)


def _copy(src, tgt, out_sql: sql.Composable, params: dict, dest: sql.Composable) -> int:
    with src.cursor() as scur, tgt.cursor() as tcur:
        with scur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(out_sql), params) as out, \
                tcur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(dest)) as inp:
            for data in out:
                inp.write(data)
        return tcur.rowcount


def apply_round(src, tgt, specs: dict[str, TableSpec], order: list[str], org: int, capture_id: str,
                prev: str | None, cur: str) -> RoundResult:
    result = RoundResult()
    with tgt.transaction():
        tgt.execute("SET LOCAL session_replication_role = replica")
        present: list[str] = []
        for name in order:
            spec = specs[name]
            params = {"tbl": name, "cap": capture_id, "prev": prev, "cur": cur, "org": org}
            n = src.execute(sql.SQL("SELECT count(*) FROM ({}) k").format(logged_keys_sql(spec)), params).fetchone()[0]
            if not n:
                continue
            result.keys[name] = int(n)
            present.append(name)
            temp = _key_temp(spec)
            tgt.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                temp, spec.pk_cols(None), spec.ident))
            _copy(src, tgt, logged_keys_sql(spec), params, temp)
            # The keys the source's current rows of the organization carry (re-inserted below).
            current = sql.Identifier(f"_migrator_cur_{name}"[:63])
            tgt.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                current, spec.pk_cols(None), spec.ident))
            _copy(src, tgt, _current_rows(spec, pk_only=True), params, current)
        for name in reversed(present):  # children first: their parents still resolve the organization
            spec = specs[name]
            temp = _key_temp(spec)
            current = sql.Identifier(f"_migrator_cur_{name}"[:63])
            result.deleted += tgt.execute(sql.SQL("DELETE FROM {table} AS t USING {temp} WHERE {match} AND ({pred})")
                                          .format(table=spec.ident, temp=temp, match=_match(spec, "t", temp),
                                                  pred=spec.predicate), {"org": org}).rowcount
            result.deleted += tgt.execute(sql.SQL("DELETE FROM {table} AS t USING {cur} WHERE {match}").format(
                table=spec.ident, cur=current, match=_match(spec, "t", current))).rowcount
        for name in present:
            spec = specs[name]
            params = {"tbl": name, "cap": capture_id, "prev": prev, "cur": cur, "org": org}
            result.copied += _copy(src, tgt, _current_rows(spec), params,
                                   sql.SQL("{} ({})").format(spec.ident, spec.cols()))
    return result


def _current_rows(spec: TableSpec, pk_only: bool = False) -> sql.Composable:
    """The source's current rows of the organization whose keys were logged."""
    cols = spec.pk_cols("t") if pk_only else spec.cols("t")
    return sql.SQL("SELECT {cols} FROM {table} AS t WHERE ({pred}) AND ({pk}) IN ({keys})").format(
        cols=cols, table=spec.ident, pred=spec.predicate, pk=spec.pk_cols("t"), keys=logged_keys_sql(spec))
