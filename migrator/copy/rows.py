"""copy_rows: the organization's rows, table by table, range by range, batch by batch.

A batch is a key range ``(a, b]`` of one table:
``COPY (SELECT … WHERE <org predicate> AND (pk) > a AND (pk) <= b) TO STDOUT (FORMAT BINARY)`` on
the source, streamed straight into ``COPY … FROM STDIN (FORMAT BINARY)`` on the target in one
target transaction:
- when the target holds no row in the batch's key span (the first pass), into the table itself;
- otherwise (a batch re-run after a crash, a re-copy) into a temporary staging table, then one
  set-based ``INSERT … ON CONFLICT (pk) DO UPDATE``; so re-running a batch changes nothing.
After the target commits, ``b`` is checkpointed in the control database (fenced by the move's token
and the unit's lease): every row of the organization up to ``b`` is on the target, so a resumed
unit starts after ``b``.

Where the batches end: a unit's range (``plan_ranges``: at most ``chunk_rows`` rows, counted) is
one batch when the planner expects at most ``batch_rows`` rows in it, else it is cut at every
``batch_rows``-th key by one sorting scan on the source. The batch query has no ``ORDER BY``/``LIMIT``
(measured: the keyset form ``ORDER BY pk LIMIT n`` cost the source ~2x the CPU; docs/performance.md).

How the organization's rows are found (``spec.org_scan``, ADR 0017): when they are a small share of
the table, through the sharding-key indexes, the parents' keys resolved level by level into arrays,
so a batch costs the organization's rows whatever the size of the cell; when they are most of it,
by one pass over the table with the parents' keys hashed once (nested loops priced out). No row
passes through Python objects; memory stays flat.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from migrator.copy.spec import INDEX, TableSpec, choose_path, json_key, org_scan, plan_rows

log = logging.getLogger(__name__)

# Sorting a range's keys to cut it into batches or ranges: enough memory to sort a few million keys
# without spilling to disk (the source session, that one statement's transaction only).
SPLIT_WORK_MEM = "64MB"
# Looking up the organization's first key to narrow the first batch's probe is an optimisation: give
# up after this long and probe the whole span (worst case: that batch takes the upsert path).
FIRST_KEY_TIMEOUT_MS = 500


@dataclass
class BatchResult:
    rows: int
    bytes: int
    last_key: list | None  # the batch's upper bound: every row of the organization up to it is copied
    path: str  # "direct" or "upsert"


# ------------------------------------------------------------------ reading keys on the source
def estimate_rows(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None) -> float:
    """The planner's estimate of the organization's rows in (lo, hi] (an EXPLAIN: no scan)."""
    return plan_rows(conn, sql.SQL("SELECT 1 FROM {} AS t WHERE {}").format(spec.ident, spec.where(lo, hi)),
                     {"org": org})


def _edge_key(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None, *, last: bool,
              path: str | None = None) -> list | None:
    with org_scan(conn, spec, org, path=path, first_rows=True) as s:
        row = conn.execute(s.edge_key_sql(lo, hi, last=last), {"org": org}).fetchone()
    return json_key(row) if row else None


def first_key(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None, *,
              timeout_ms: int | None = None, path: str | None = None) -> list | None:
    """The organization's smallest key in (lo, hi] (None if the range holds none of its rows).

    With ``timeout_ms``, None also when finding it takes longer (it walks the table in key order
    until the organization's first row: instant when its rows are spread through the table, long
    for a young organization at the end of a large shared table).
    """
    if timeout_ms is None:
        return _edge_key(conn, spec, org, lo, hi, last=False, path=path)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{int(timeout_ms)}ms")))
            return _edge_key(conn, spec, org, lo, hi, last=False, path=path)
    except psycopg.errors.QueryCanceled:
        log.info("%s: the organization's first key took over %s ms to find; probing the whole batch span",
                 spec.name, timeout_ms)
        return None


def last_key(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None, *, path: str | None = None
             ) -> list | None:
    """The organization's greatest key in (lo, hi] (None if the range holds none of its rows)."""
    return _edge_key(conn, spec, org, lo, hi, last=True, path=path)


def split_points(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None, every: int, *,
                 path: str | None = None) -> list[tuple[list, int]]:
    """``(key, n)`` for every ``every``-th key of the organization's rows in (lo, hi] and for the last
    one, ``n`` being the key's ordinal in the range. Empty if the range holds none of its rows."""
    n = len(spec.pk)
    with org_scan(conn, spec, org, work_mem=SPLIT_WORK_MEM, path=path) as s:
        rows = conn.execute(s.split_points_sql(lo, hi, every), {"org": org}).fetchall()
    return [(json_key(r[:n]), int(r[n])) for r in rows]


def count_rows(conn, spec: TableSpec, org: int, lo: list | None = None, hi: list | None = None, *,
               path: str | None = None) -> int:
    """The organization's rows of one table (in (lo, hi] when given), exactly. Without bounds, a small
    organization's rows are counted in the sharding-key index alone (``org_scan``'s ``count_only``)."""
    with org_scan(conn, spec, org, path=path, count_only=lo is None and hi is None) as s:
        return int(conn.execute(s.count_sql(lo, hi), {"org": org}).fetchone()[0])


def plan_ranges(conn, spec: TableSpec, org: int, chunk_rows: int) -> list[dict]:
    """Split the organization's rows of one table into key ranges of at most ``chunk_rows`` rows.

    Every range but the last ends at a key (inclusive); the last is open. Exact, whatever the
    statistics: a table the planner expects to fit in one range is counted (a scan without sorting)
    and split only if the count says so; a larger one is split and counted by one sorting scan.
    """
    path = choose_path(conn, spec, org)
    if estimate_rows(conn, spec, org, None, None) > chunk_rows:
        points = split_points(conn, spec, org, None, None, chunk_rows, path=path)
        total = points[-1][1] if points else 0
    else:
        total = count_rows(conn, spec, org, path=path)
        points = split_points(conn, spec, org, None, None, chunk_rows, path=path) if total > chunk_rows else []
    bounds = [(key, n) for key, n in points if n % chunk_rows == 0 and n < total]
    ranges, lo, done = [], None, 0
    for i, (hi, n) in enumerate([*bounds, (None, total)]):
        ranges.append({"unit": f"{spec.name}:{i:04d}", "table_name": spec.name, "lo": lo, "hi": hi,
                       "total": max(n - done, 0)})
        lo, done = hi, n
    return ranges


def edge_keys(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None, *, path: str | None = None
              ) -> tuple[list | None, list | None]:
    """The organization's smallest and greatest keys in (lo, hi], from one read of its rows there
    (``(None, None)`` if it has none). For the index path, where each edge alone reads them all."""
    with org_scan(conn, spec, org, path=path) as s:
        rows = conn.execute(s.edge_keys_sql(lo, hi), {"org": org}).fetchall()
    edges = {int(r[0]): json_key(r[1:]) for r in rows}
    return edges.get(0), edges.get(1)


def batch_bounds(src, spec: TableSpec, org: int, after: list | None, hi: list | None, batch_rows: int, *,
                 path: str | None = None, upto: list | None = None) -> list[list]:
    """Inclusive upper keys of the batches that copy the organization's rows in (after, hi].

    One batch up to the range's last key of the organization when the planner expects at most
    ``batch_rows`` rows; otherwise cut at every ``batch_rows``-th key (one sorting scan). A
    misestimate only changes how many rows one checkpoint covers, never more than the range, which
    ``plan_ranges`` bounded by an exact count. Empty when the range holds none of the rows.
    ``upto``: the organization's last key in the range, when the caller has it already.
    """
    path = path or choose_path(src, spec, org)
    upto = upto or last_key(src, spec, org, after, hi, path=path)
    if upto is None:
        return []
    if estimate_rows(src, spec, org, after, upto) <= batch_rows:
        return [upto]
    return [key for key, _n in split_points(src, spec, org, after, upto, batch_rows, path=path)] or [upto]


# ------------------------------------------------------------------ writing on the target
def _stage_name(spec: TableSpec) -> sql.Identifier:
    return sql.Identifier(f"_migrator_stage_{spec.name}"[:63])


def _ensure_stage(tgt, spec: TableSpec) -> None:
    tgt.execute(sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ).format(_stage_name(spec), spec.ident))


def _upsert_sql(spec: TableSpec) -> sql.Composable:
    update = getattr(spec, "update_columns", None)  # never the key, never a GENERATED ALWAYS identity
    non_pk = list(update) if update is not None else [c for c in spec.columns if c not in spec.pk]
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


def _target_has_rows(tgt, spec: TableSpec, lo: list | None, hi: list | None, *, from_key: list | None = None
                     ) -> bool:
    """Whether the target holds any row with a key in (lo, hi], or in [from_key, hi] when given."""
    if from_key is not None:
        row = sql.SQL("ROW({})").format(spec.pk_cols("t"))
        cond = sql.SQL("{row} >= {a} AND {row} <= {b}").format(row=row, a=spec.key_literal(from_key),
                                                             b=spec.key_literal(hi))
    else:
        cond = spec.range_condition(lo, hi)
    q = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE {})").format(spec.ident, cond)
    return bool(tgt.execute(q).fetchone()[0])


def _stream(src, tgt, spec: TableSpec, org: int, lo: list | None, hi: list | None, dest: sql.Composable,
            path: str | None = None, on_chunk: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Pipe the organization's rows in (lo, hi] from the source into the target by binary COPY.
    ``on_chunk(n)`` after each chunk of ``n`` bytes written (a throttle may sleep there). Returns (rows, bytes)."""
    nbytes = 0
    in_sql = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(dest)
    with org_scan(src, spec, org, path=path) as s, src.cursor() as scur, tgt.cursor() as tcur:
        out_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(s.select_range(lo, hi))
        with scur.copy(out_sql, {"org": org}) as out, tcur.copy(in_sql) as inp:
            for data in out:
                nbytes += len(data)
                inp.write(data)
                if on_chunk is not None:
                    on_chunk(len(data))
        return tcur.rowcount, nbytes


def copy_batch(src, tgt, spec: TableSpec, org: int, after: list | None, upto: list, *,
               disable_triggers: bool = True, token: str | None = None, first: list | None = None,
               path: str | None = None, on_chunk: Callable[[int], None] | None = None) -> BatchResult:
    """Copy the organization's rows with keys in (after, upto]. One target transaction.

    ``first``: the organization's smallest key in the batch, when known: the "already there?" probe
    then looks at [first, upto] only, so the target's own rows below it (a cell with a lower ID
    range) do not send a first pass down the slower upsert path.
    """
    if upto is None:
        raise ValueError("copy_batch needs an upper key bound")
    with tgt.transaction():
        # One snapshot for the probe and the write: rows another session commits meanwhile stay invisible.
        tgt.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if disable_triggers:
            # FK and user triggers off for this transaction: parents and children arrive in any order.
            tgt.execute("SET LOCAL session_replication_role = replica")
        if token:
            tgt.execute("SELECT set_config('migrator.move_token', %s, true)", (token,))
        if not _target_has_rows(tgt, spec, after, upto, from_key=first):
            rows, nbytes = _stream(src, tgt, spec, org, after, upto, sql.SQL("{} ({})").format(spec.ident, spec.cols()),
                                   path, on_chunk)
            path = "direct"
        else:
            _ensure_stage(tgt, spec)
            rows, nbytes = _stream(src, tgt, spec, org, after, upto,
                                   sql.SQL("{} ({})").format(_stage_name(spec), spec.cols()), path, on_chunk)
            tgt.execute(_upsert_sql(spec))
            path = "upsert"
    return BatchResult(rows=rows, bytes=nbytes, last_key=upto, path=path)


def copy_range(src, tgt, spec: TableSpec, org: int, *, lo: list | None, hi: list | None, position: list | None,
               batch_rows: int, checkpoint, disable_triggers: bool = True, token: str | None = None,
               on_chunk: Callable[[int], None] | None = None) -> int:
    """Copy a key range from its checkpoint on. ``checkpoint(last_key, rows, bytes)`` after each batch;
    ``on_chunk(n)`` after each chunk of the COPY stream (see ``_stream``)."""
    after = position if position is not None else lo
    path = choose_path(src, spec, org)
    # A range open below is where the target's own (lower) keys can sit: probe from the org's first key.
    if path == INDEX:  # both edges from one read of the organization's rows
        first, upto = edge_keys(src, spec, org, after, hi, path=path)
        bounds = batch_bounds(src, spec, org, after, hi, batch_rows, path=path, upto=upto) if upto else []
        first = first if after is None else None
    else:
        bounds = batch_bounds(src, spec, org, after, hi, batch_rows, path=path)
        first = first_key(src, spec, org, None, bounds[0], timeout_ms=FIRST_KEY_TIMEOUT_MS, path=path) \
            if bounds and after is None else None
    copied = 0
    for upto in bounds:
        result = copy_batch(src, tgt, spec, org, after, upto, disable_triggers=disable_triggers, token=token,
                            first=first, path=path, on_chunk=on_chunk)
        checkpoint(result.last_key, result.rows, result.bytes)
        copied += result.rows
        after, first = upto, None
    return copied


def delete_range(tgt, spec: TableSpec, org: int, lo: list | None, hi: list | None, *, batch: int = 10_000,
                 disable_triggers: bool = True, token: str | None = None, rows: float | None = None,
                 on_batch: Callable[[int], None] | None = None) -> int:
    """Delete the organization's rows of a key range in ``tgt`` (a target, or a source at cleanup), in batches.

    ``rows``: the organization's rows in the table, when ``tgt``'s statistics may not know them yet.
    ``on_batch(n)``: called after each committed batch with the rows it deleted (cleanup's progress).
    """
    deleted = 0
    path = choose_path(tgt, spec, org, rows)
    while True:
        with org_scan(tgt, spec, org, path=path) as s:
            if disable_triggers:
                tgt.execute("SET LOCAL session_replication_role = replica")
            if token:
                tgt.execute("SELECT set_config('migrator.move_token', %s, true)", (token,))
            n = tgt.execute(s.delete_sql(lo, hi, limit=batch), {"org": org}).rowcount
        deleted += n
        if on_batch is not None and n:
            on_batch(n)
        if n < batch:
            return deleted
