"""What the copier and verifier know about one organization-scoped table, and the SQL they build.

Everything is composed with ``psycopg.sql`` (identifiers quoted, key values as typed literals); the
organization id is the named placeholder ``%(org)s``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace

from psycopg import sql

from migrator.cells.names import qualified

# Session settings that make a row's text form identical on every cell (checksums compare text).
STABLE_SESSION = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, MDY'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
    "SET lc_monetary = 'C'",
)


def stabilize_session(conn) -> None:
    conn.execute("; ".join(STABLE_SESSION))  # one round trip (no parameters: one simple query)


# The organization's share of a table up to which its rows are found through indexes (ADR 0017).
INDEX_PATH_MAX_FRACTION = 0.2
# ... and up to which they are counted in the sharding-key index alone (an index-only scan reads the
# organization's index entries, not the table: 182 ms against 892 ms for a scan, 661k notes of 3.3M).
COUNT_INDEX_MAX_FRACTION = 0.5
INDEX = "index"
SCAN = "scan"


def plan_rows(conn, query: sql.Composable, params: dict | None = None) -> float:
    """The planner's estimate of the rows ``query`` returns (an EXPLAIN: nothing is read)."""
    plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), params).fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return float(plan[0]["Plan"]["Plan Rows"])


def table_rows(conn, spec: TableSpec) -> float:
    """The planner's estimate of the table's rows (no scan)."""
    return plan_rows(conn, sql.SQL("SELECT 1 FROM {} AS t").format(spec.ident))


def org_rows(conn, spec: TableSpec, org: int) -> float:
    """The planner's estimate of the organization's rows in the table (no scan)."""
    return plan_rows(conn, sql.SQL("SELECT 1 FROM {} AS t WHERE {}").format(spec.ident, spec.predicate),
                      {"org": org})


def choose_path(conn, spec: TableSpec, org: int, rows: float | None = None,
                max_fraction: float = INDEX_PATH_MAX_FRACTION) -> str:
    """``index`` when the organization is a small share of the table and its keys are indexed, else ``scan``.

    ``rows``: the organization's rows in the table when known better than this cell's statistics
    can tell (the target of a copy, which has not analyzed the rows just written, asks the source).
    """
    if spec.key_predicate is None:
        return SCAN
    if rows is None:
        rows = org_rows(conn, spec, org)
    return INDEX if rows <= max_fraction * max(table_rows(conn, spec), 1.0) else SCAN


@contextmanager
def org_scan(conn, spec: TableSpec, org: int, work_mem: str | None = None, path: str | None = None,
             first_rows: bool = False, count_only: bool = False):
    """A transaction for statements that read the organization's rows of one table; yields the spec
    to build them with.

    The plan follows the organization's share of the table (:func:`choose_path`, or ``path``):
    - ``index``: the spec's predicate becomes its ``key_predicate`` (parent keys resolved level by
      level into arrays, looked up in the sharding-key indexes) and sequential scans, hash and
      merge joins are priced out: the cost follows the organization's rows, whatever the table's size;
    - ``scan``: nested loops are priced out: one pass over the table, parent keys hashed once; never
      a probe per row, whatever the statistics say (a table just bulk-loaded into a target has no
      statistics yet; the planner, expecting a handful of rows, once picked per-row index probes that
      made one checksum 35x slower, docs/performance.md).

    ``first_rows``: the statement orders by the key with a ``LIMIT`` (edge keys, blob references). On
    the scan path it keeps the planner's own plan: a walk of the primary-key index that stops at the
    organization's first rows, where the organization is most of the table (a hash join would read
    all of it for one key).

    ``count_only``: the statement reads no column of the rows (a count); on the index path it reads
    the sharding-key index alone (:func:`plan_for`).
    """
    path = path or choose_path(conn, spec, org)
    with conn.transaction():
        if path == INDEX or not first_rows:
            plan_for(conn, path, work_mem, count_only=count_only)
        yield replace(spec, predicate=spec.key_predicate, fenced=True) if path == INDEX else spec


def plan_for(conn, path: str, work_mem: str | None = None, count_only: bool = False) -> None:
    """Inside a transaction: price out the plans ``path`` excludes, for the rest of the transaction.

    ``index``: sequential scans, hash and merge joins (what is read is found through indexes), and
    plain index scans: the planner cannot know how many keys the parents' arrays will hold (it
    assumes ten), so it would fetch a large organization's rows one by one in index order; a bitmap
    scan reads them in the table's order, and costs next to nothing more for a few rows;
    ``scan``: nested loops (one pass over each table, never a probe per row).

    ``count_only`` on the index path: bitmap scans are priced out instead of plain index scans, so a
    count reads the sharding-key index alone (an index-only scan; the heap only for pages changed
    since the last vacuum). Where an organization's rows are spread over the whole table, as in a
    cell whose organizations wrote at the same time, a bitmap heap scan visits nearly every page and
    turns lossy: a 500k-row organization's count of `notes` out of 8M rows took 14.8 s that way and
    24 ms through the index alone (docs/performance.md, the write window).
    """
    if path == INDEX and count_only:
        conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;"
                     " SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
    elif path == INDEX:
        conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off;"
                     " SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
    else:
        conn.execute("SET LOCAL enable_nestloop = off")
    if work_mem:
        conn.execute(sql.SQL("SET LOCAL work_mem = {}").format(sql.Literal(work_mem)))


def json_key(values) -> list | None:
    """A key tuple as JSON-safe values (stored as checkpoints and range bounds)."""
    if values is None:
        return None
    out = []
    for v in values:
        if v is None or isinstance(v, bool | int | str):
            out.append(v)
        elif isinstance(v, bytes | bytearray | memoryview):
            out.append("\\x" + bytes(v).hex())  # bytea's hex input form: CAST('\x…' AS bytea) reads it back
        elif isinstance(v, uuid.UUID | decimal.Decimal | dt.date | dt.datetime | dt.time | dt.timedelta):
            out.append(str(v))
        else:
            out.append(str(v))
    return out


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]  # copied columns (generated columns excluded)
    pk: tuple[str, ...]
    pk_types: tuple[str, ...]
    predicate: sql.Composable  # rows of the organization, table aliased "t" (parents' keys IN subqueries)
    identity_always: bool = False  # some column is GENERATED ALWAYS AS IDENTITY (INSERT needs OVERRIDING)
    identity_always_columns: tuple[str, ...] = ()  # those columns
    # verify's row hash: per column of ``columns``, whether it is hashed as a value (else as text);
    # None: the md5 of the row's text form (``moves.checksum: text``, or PostgreSQL < 14).
    hashed: tuple[bool, ...] | None = None
    # The same rows through the sharding-key indexes (Dictionary.org_key_predicate); None: no index.
    key_predicate: sql.Composable | None = None
    # Set by ``org_scan`` on the index path: statements that order by the key first collect the
    # organization's rows (through the key predicate), then sort them, so no plan walks the whole
    # primary-key index filtering each row against the parents' keys.
    fenced: bool = False

    @property
    def update_columns(self) -> tuple[str, ...]:
        """Columns an upsert's ``DO UPDATE SET`` may assign: not the key, never a GENERATED ALWAYS identity.

        PostgreSQL refuses ``SET col = ...`` on an identity ALWAYS column ("can only be updated to
        DEFAULT"); its value never changes for a key anyway.
        """
        return tuple(c for c in self.columns if c not in self.pk and c not in self.identity_always_columns)

    @property
    def ident(self) -> sql.Identifier:
        return qualified(self.name)

    def cols(self, alias: str | None = None) -> sql.Composable:
        if alias:
            return sql.SQL(", ").join(sql.Identifier(alias, c) for c in self.columns)
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)

    def pk_cols(self, alias: str | None = "t") -> sql.Composable:
        if alias:
            return sql.SQL(", ").join(sql.Identifier(alias, c) for c in self.pk)
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.pk)

    def pk_desc(self, alias: str | None = "t") -> sql.Composable:
        """ORDER BY the key, descending on every column (``ORDER BY a, b DESC`` would not be)."""
        cols = [sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in self.pk]
        return sql.SQL(", ").join(sql.SQL("{} DESC").format(c) for c in cols)

    def key_literal(self, values: list) -> sql.Composable:
        parts = [
            sql.SQL("CAST({} AS {})").format(sql.Literal(v), sql.SQL(t))  # t comes from format_type()
            for v, t in zip(values, self.pk_types, strict=True)
        ]
        return sql.SQL("ROW({})").format(sql.SQL(", ").join(parts))

    def range_condition(self, lo: list | None, hi: list | None, alias: str = "t") -> sql.Composable:
        """(pk) > lo AND (pk) <= hi; an absent bound is open."""
        conds: list[sql.Composable] = []
        row = sql.SQL("ROW({})").format(self.pk_cols(alias))
        if lo is not None:
            conds.append(sql.SQL("{} > {}").format(row, self.key_literal(lo)))
        if hi is not None:
            conds.append(sql.SQL("{} <= {}").format(row, self.key_literal(hi)))
        return sql.SQL(" AND ").join(conds) if conds else sql.SQL("TRUE")

    def where(self, lo: list | None = None, hi: list | None = None) -> sql.Composable:
        return sql.SQL("({}) AND {}").format(self.predicate, self.range_condition(lo, hi))

    def rows_of(self, lo: list | None, hi: list | None, cols: sql.Composable) -> sql.Composable:
        """A ``FROM`` item: the organization's rows in (lo, hi], columns ``cols``, aliased ``t``.

        Fenced (``OFFSET 0``: the subquery is planned on its own) on the index path, so an outer
        ``ORDER BY`` on the key cannot turn it into a walk of the whole primary-key index that tests
        each row against the parents' keys; otherwise PostgreSQL pulls it up into the outer query.
        """
        return sql.SQL("(SELECT {cols} FROM {table} AS t WHERE {where}{fence}) AS t").format(
            cols=cols, table=self.ident, where=self.where(lo, hi),
            fence=sql.SQL(" OFFSET 0") if self.fenced else sql.SQL(""))

    def edge_key_sql(self, lo: list | None, hi: list | None, *, last: bool) -> sql.Composable:
        """The organization's smallest (``last``: greatest) key in (lo, hi]."""
        order = self.pk_desc("t") if last else self.pk_cols("t")
        return sql.SQL("SELECT {pk} FROM {rows} ORDER BY {order} LIMIT 1").format(
            pk=self.pk_cols("t"), rows=self.rows_of(lo, hi, self.pk_cols("t")), order=order)

    def edge_keys_sql(self, lo: list | None, hi: list | None) -> sql.Composable:
        """The organization's smallest and greatest keys in (lo, hi] from one read of its rows: two rows
        ``(0, key…)`` and ``(1, key…)``, none when the range holds none of them."""
        return sql.SQL(
            "WITH o AS MATERIALIZED (SELECT {pk} FROM {rows})"
            " (SELECT 0, {pk} FROM o AS t ORDER BY {asc} LIMIT 1) UNION ALL"
            " (SELECT 1, {pk} FROM o AS t ORDER BY {desc} LIMIT 1)"
        ).format(pk=self.pk_cols("t"), rows=self.rows_of(lo, hi, self.pk_cols("t")), asc=self.pk_cols("t"),
                 desc=self.pk_desc("t"))

    def select_batch(self, after: list | None, hi: list | None, limit: int | None) -> sql.Composable:
        q = sql.SQL("SELECT {cols} FROM {table} AS t WHERE {where} ORDER BY {pk}").format(
            cols=self.cols("t"), table=self.ident, where=self.where(after, hi), pk=self.pk_cols("t")
        )
        if limit:
            q = sql.SQL("{} LIMIT {}").format(q, sql.Literal(int(limit)))
        return q

    def select_range(self, lo: list | None, hi: list | None) -> sql.Composable:
        """The organization's rows in the key range (lo, hi], in no particular order.

        No ``ORDER BY``/``LIMIT``: the planner is free to hash the organization's parent keys once
        (a hash semi-join) instead of probing the sharding-key chain row by row in key order.
        """
        return sql.SQL("SELECT {cols} FROM {table} AS t WHERE {where}").format(
            cols=self.cols("t"), table=self.ident, where=self.where(lo, hi))

    def split_points_sql(self, lo: list | None, hi: list | None, every: int) -> sql.Composable:
        """Keys splitting the organization's rows in (lo, hi] into runs of ``every`` rows.

        Returns ``(pk columns…, n)`` for every ``every``-th key in key order plus the last key, ``n``
        being its ordinal in the range (so the last row's ``n`` is the range's row count). One scan.
        """
        inner_pk = sql.SQL(", ").join(sql.Identifier(c) for c in self.pk)
        return sql.SQL(
            "SELECT {pk}, s._migrator_n FROM (SELECT {tpk}, row_number() OVER w AS _migrator_n,"
            " lead(true) OVER w AS _migrator_more FROM {rows} WINDOW w AS (ORDER BY {tpk})) s"
            " WHERE mod(s._migrator_n, {every}) = 0 OR s._migrator_more IS NULL ORDER BY s._migrator_n"
        ).format(pk=inner_pk, tpk=self.pk_cols("t"), rows=self.rows_of(lo, hi, self.pk_cols("t")),
                 every=sql.Literal(int(every)))

    def count_sql(self, lo: list | None = None, hi: list | None = None) -> sql.Composable:
        return sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(self.ident, self.where(lo, hi))

    def row_hash(self) -> sql.Composable:
        """A 64-bit hash of row ``t`` (summed by the checksums). With ``hashed``: ``hash_record_extended``
        over the row's values, a column whose type has no hash function (json, point, xml…) or a
        nondeterministic collation entering as its text form in the "C" collation. Without: a 64-bit
        prefix of the md5 of the row's text form."""
        if self.hashed is None:
            return sql.SQL("('x' || substr(md5(ROW({cols})::text), 1, 16))::bit(64)::bigint").format(
                cols=self.cols("t"))
        values = sql.SQL(", ").join(
            sql.Identifier("t", c) if hashed else sql.SQL('CAST({} AS text) COLLATE "C"').format(sql.Identifier("t", c))
            for c, hashed in zip(self.columns, self.hashed, strict=True))
        return sql.SQL("hash_record_extended(ROW({values}), 0)").format(values=values)

    def keys_from_json(self, param: str, alias: str = "e") -> sql.Composable:
        """``SELECT`` of typed keys from the JSON array parameter ``%(param)s`` (each key a JSON array)."""
        cols = sql.SQL(", ").join(
            sql.SQL("CAST({} ->> {} AS {}) AS {}").format(sql.Identifier(alias), sql.Literal(i), sql.SQL(t),
                                                         sql.Identifier(c))
            for i, (c, t) in enumerate(zip(self.pk, self.pk_types, strict=True)))
        return sql.SQL("SELECT {} FROM jsonb_array_elements(CAST({} AS jsonb)) AS {}").format(
            cols, sql.Placeholder(param), sql.Identifier(alias))

    def checksum_sql(self, lo: list | None = None, hi: list | None = None, *,
                     excluding: str | None = None) -> sql.Composable:
        """Row count and an order-independent checksum (the sum of :meth:`row_hash`) of the organization's
        rows in (lo, hi]. ``excluding``: the name of a parameter holding keys (a JSON array of key
        arrays) whose rows are left out on both sides: keys in flux while the organization is writable."""
        where = self.where(lo, hi)
        if excluding:
            where = sql.SQL("{} AND ROW({}) NOT IN ({})").format(where, self.pk_cols("t"),
                                                                 self.keys_from_json(excluding))
        return sql.SQL("SELECT count(*), coalesce(sum({hash}), 0)::text FROM {table} AS t WHERE {where}").format(
            hash=self.row_hash(), table=self.ident, where=where)

    def keys_checksum_sql(self, param: str = "keys") -> sql.Composable:
        """Count and checksum of the organization's rows among the keys in ``%(param)s``, found by key
        (the keys drive the plan: a few probes of the primary key, whatever the table's size)."""
        match = sql.SQL(" AND ").join(sql.SQL("t.{c} = k.{c}").format(c=sql.Identifier(c)) for c in self.pk)
        return sql.SQL(
            "SELECT count(t.*), coalesce(sum({hash}), 0)::text FROM ({keys}) AS k"
            " JOIN {table} AS t ON {match} WHERE ({pred})"
        ).format(hash=self.row_hash(), keys=self.keys_from_json(param), table=self.ident, match=match,
                 pred=self.predicate)

    def boundaries_sql(self, every: int) -> sql.Composable:
        """Every ``every``-th key of the organization's rows in key order (range split points)."""
        inner_pk = sql.SQL(", ").join(sql.Identifier(c) for c in self.pk)
        return sql.SQL(
            "SELECT {pk} FROM (SELECT {tpk}, row_number() OVER (ORDER BY {tpk}) AS _rn"
            " FROM {table} AS t WHERE {pred}) s WHERE mod(s._rn, {every}) = 0 ORDER BY {pk}"
        ).format(pk=inner_pk, tpk=self.pk_cols("t"), table=self.ident, pred=self.predicate,
                 every=sql.Literal(int(every)))

    def delete_sql(self, lo: list | None = None, hi: list | None = None, limit: int | None = None) -> sql.Composable:
        """Delete the organization's rows (optionally a range, in batches of ``limit``)."""
        if limit:
            return sql.SQL(
                "DELETE FROM {table} WHERE ROW({pk}) IN (SELECT {tpk} FROM {table} AS t WHERE {where} LIMIT {n})"
            ).format(table=self.ident, pk=self.pk_cols(None), tpk=self.pk_cols("t"),
                     where=self.where(lo, hi), n=sql.Literal(int(limit)))
        return sql.SQL("DELETE FROM {table} AS t WHERE {where}").format(table=self.ident, where=self.where(lo, hi))

    def pk_select(self) -> sql.Composable:
        return sql.SQL("SELECT {pk} FROM {table} AS t WHERE {pred}").format(
            pk=self.pk_cols("t"), table=self.ident, pred=self.predicate)


def table_specs(dictionary, live, checksum: str = "hash") -> dict[str, TableSpec]:
    """A TableSpec for every organization-scoped table, from the dictionary and a live schema.

    ``checksum``: verify's row hash, ``moves.checksum`` ("hash" needs PostgreSQL 14+, else "text").
    """
    specs = {}
    for name in dictionary.org_tables():
        info = live.tables[name]
        copied = [c for c in sorted(info.columns, key=lambda c: c.position) if not c.generated]
        columns = tuple(c.name for c in copied)
        hashed = tuple(c.hashable for c in copied) if checksum == "hash" and live.row_hash else None
        types = {c.name: c.type for c in info.columns}
        specs[name] = TableSpec(
            name=name,
            columns=columns,
            pk=tuple(info.primary_key),
            pk_types=tuple(types[c] for c in info.primary_key),
            predicate=dictionary.org_predicate(name, live, alias="t"),
            key_predicate=dictionary.org_key_predicate(name, live, alias="t"),
            identity_always=any(c.identity == "always" for c in info.columns),
            identity_always_columns=tuple(c.name for c in info.columns if c.identity == "always"),
            hashed=hashed,
        )
    return specs
