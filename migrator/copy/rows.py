"""copy_rows: the organization's rows, table by table, range by range, batch by batch.

A batch is ``COPY (SELECT … ORDER BY pk LIMIT n) TO STDOUT (FORMAT BINARY)`` on the source streamed
straight into ``COPY … FROM STDIN (FORMAT BINARY)`` on the target, in one target transaction:
- when the target holds no row in the batch's key range (the first pass), into the table itself;
- otherwise (a batch re-run after a crash, a re-copy) into a temporary staging table, then one
  set-based ``INSERT … ON CONFLICT (pk) DO UPDATE``; so re-running a batch changes nothing.
After the target commits, the last key is checkpointed in the control database (fenced by the
move's token and the unit's lease). No row passes through Python objects; memory stays flat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from psycopg import sql

from migrator.copy.spec import TableSpec, json_key

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    rows: int
    bytes: int
    last_key: list | None
    path: str  # "direct" or "upsert"


def plan_ranges(conn, spec: TableSpec, org: int, chunk_rows: int) -> list[dict]:
    """Split the organization's rows of one table into key ranges of about ``chunk_rows`` rows."""
    total = conn.execute(spec.count_sql(), {"org": org}).fetchone()[0]
    bounds: list[list] = []
    if total > chunk_rows:
        bounds = [json_key(row) for row in conn.execute(spec.boundaries_sql(chunk_rows), {"org": org})]
        if bounds and total % chunk_rows == 0:
            bounds = bounds[:-1]  # the last boundary is the last key: the open range covers it
    ranges, lo = [], None
    for i, hi in enumerate([*bounds, None]):
        rows = chunk_rows if hi is not None else total - chunk_rows * len(bounds)
        ranges.append({"unit": f"{spec.name}:{i:04d}", "table_name": spec.name, "lo": lo, "hi": hi,
                       "total": max(rows, 0)})
        lo = hi
    return ranges


def _stage_name(spec: TableSpec) -> sql.Identifier:
    return sql.Identifier(f"_migrator_stage_{spec.name}"[:63])


def _ensure_stage(tgt, spec: TableSpec) -> None:
    tgt.execute(sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ).format(_stage_name(spec), spec.ident))


def _upsert_sql(spec: TableSpec) -> sql.Composable:
    non_pk = [c for c in spec.columns if c not in spec.pk]
    if non_pk:
        action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in non_pk))
    else:
        action = sql.SQL("DO NOTHING")
    return sql.SQL(
        "INSERT INTO {table} ({cols}) {override}SELECT {cols} FROM {stage} ON CONFLICT ({pk}) {action}"
    ).format(
        table=spec.ident, cols=spec.cols(), stage=_stage_name(spec), pk=spec.pk_cols(None), action=action,
        override=sql.SQL("OVERRIDING SYSTEM VALUE ") if spec.identity_always else sql.SQL(""))


def _target_has_rows(tgt, spec: TableSpec, lo: list | None, hi: list | None) -> bool:
    q = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE {})").format(spec.ident, spec.range_condition(lo, hi))
    return bool(tgt.execute(q).fetchone()[0])


def _stream(src, tgt, select: sql.Composable, org: int, dest: sql.Composable) -> tuple[int, int]:
    """Pipe one binary COPY from the source into the target. Returns (rows, bytes)."""
    nbytes = 0
    out_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(select)
    in_sql = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(dest)
    with src.cursor() as scur, tgt.cursor() as tcur:
        with scur.copy(out_sql, {"org": org}) as out, tcur.copy(in_sql) as inp:
            for data in out:
                nbytes += len(data)
                inp.write(data)
        return tcur.rowcount, nbytes


def last_key(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None) -> list | None:
    """The organization's greatest key in a range (None if the range holds none of its rows)."""
    q = sql.SQL("SELECT {pk} FROM {table} AS t WHERE {where} ORDER BY {desc} LIMIT 1").format(
        pk=spec.pk_cols("t"), table=spec.ident, where=spec.where(lo, hi), desc=spec.pk_desc("t"))
    row = conn.execute(q, {"org": org}).fetchone()
    return json_key(row) if row else None


def copy_batch(src, tgt, spec: TableSpec, org: int, after: list | None, hi: list | None, limit: int, *,
               disable_triggers: bool = True, token: str | None = None,
               check_hi: list | None = None) -> BatchResult:
    """Copy up to ``limit`` rows after key ``after`` (and at most ``hi``). One target transaction.

    ``check_hi`` bounds the "target already has rows here?" probe when ``hi`` is open.
    """
    select = spec.select_batch(after, hi, limit)
    with tgt.transaction():
        # One snapshot for probe and read-back: rows another session commits meanwhile stay invisible.
        tgt.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if disable_triggers:
            # FK and user triggers off for this transaction: parents and children arrive in any order.
            tgt.execute("SET LOCAL session_replication_role = replica")
        if token:
            tgt.execute("SELECT set_config('migrator.move_token', %s, true)", (token,))
        probe_hi = hi if hi is not None else check_hi
        if not _target_has_rows(tgt, spec, after, probe_hi):
            dest = sql.SQL("{} ({})").format(spec.ident, spec.cols())
            rows, nbytes = _stream(src, tgt, select, org, dest)
            path = "direct"
            last = tgt.execute(sql.SQL(
                "SELECT {pk} FROM {table} AS t WHERE {cond} ORDER BY {desc} LIMIT 1"
            ).format(pk=spec.pk_cols("t"), table=spec.ident, cond=spec.range_condition(after, probe_hi),
                     desc=spec.pk_desc("t"))).fetchone() \
                if rows else None  # the probe found the range empty: every row in it is one we just wrote
        else:
            _ensure_stage(tgt, spec)
            dest = sql.SQL("{} ({})").format(_stage_name(spec), spec.cols())
            rows, nbytes = _stream(src, tgt, select, org, dest)
            tgt.execute(_upsert_sql(spec))
            path = "upsert"
            last = tgt.execute(sql.SQL("SELECT {pk} FROM {stage} ORDER BY {desc} LIMIT 1").format(
                pk=spec.pk_cols(None), stage=_stage_name(spec), desc=spec.pk_desc(None))).fetchone() if rows else None
    return BatchResult(rows=rows, bytes=nbytes, last_key=json_key(last) if last else None, path=path)


def copy_range(src, tgt, spec: TableSpec, org: int, *, lo: list | None, hi: list | None, position: list | None,
               batch_rows: int, checkpoint, disable_triggers: bool = True, token: str | None = None) -> int:
    """Copy a key range from its checkpoint on. ``checkpoint(last_key, rows, bytes)`` after each batch."""
    after = position if position is not None else lo
    check_hi = hi if hi is not None else last_key(src, spec, org, after, None)
    if check_hi is None:
        return 0  # nothing (left) to copy in this range
    copied = 0
    while True:
        result = copy_batch(src, tgt, spec, org, after, hi, batch_rows, disable_triggers=disable_triggers,
                            token=token, check_hi=check_hi)
        if result.rows:
            checkpoint(result.last_key, result.rows, result.bytes)
            copied += result.rows
            after = result.last_key
        if result.rows < batch_rows:
            return copied


def delete_range(tgt, spec: TableSpec, org: int, lo: list | None, hi: list | None, *, batch: int = 10_000,
                 disable_triggers: bool = True, token: str | None = None) -> int:
    """Delete the organization's rows of a key range in the target, in batches."""
    deleted = 0
    while True:
        with tgt.transaction():
            if disable_triggers:
                tgt.execute("SET LOCAL session_replication_role = replica")
            if token:
                tgt.execute("SELECT set_config('migrator.move_token', %s, true)", (token,))
            n = tgt.execute(spec.delete_sql(lo, hi, limit=batch), {"org": org}).rowcount
        deleted += n
        if n < batch:
            return deleted
