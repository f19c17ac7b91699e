"""A cell's sequences and the ID range the Topology Service holds for the cell.

Rows move between cells with their IDs unchanged (docs/adr/0002-id-ranges.md), so every sequence
that hands out IDs of organization rows must draw from the cell's own range ``[lo, hi]``.

``cells init`` on a cell whose schema it created sets every sequence at once
(:func:`set_sequence_ranges`). On an *adopted* cell it only looks (:func:`check_sequences`): each
sequence is ``in_range`` (its next value is in the range and its bounds keep it there),
``unbounded`` (its next value is in the range but nothing stops it from running past ``hi``: a
warning), ``outside`` (its next value is not in the range: moves could collide) or ``skipped`` (it
only feeds ``cell_local`` / ``cluster_wide`` tables, whose rows never move, or it counts down).
With ``--set-sequences`` the ``outside`` and ``unbounded`` ones are set (:func:`set_sequence_ranges`),
after their original bounds are recorded in ``migrator.sequence_bounds`` so that
``cells uninstall`` can put them back.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from migrator.cells.names import dotted, qualified
from migrator.errors import MigratorError

log = logging.getLogger(__name__)

IN_RANGE = "in_range"
UNBOUNDED = "unbounded"
OUTSIDE = "outside"
SKIPPED = "skipped"

_TYPE_MAX = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}

# Every sequence of a schema (%(schema)s NULL: of every application schema; sequences and tables named as
# migrator.cells.names names tables) with the tables that draw from it: the table owning it (serial,
# identity) and every table whose column default calls it; partitions are reported as their root.
SEQUENCES = """
WITH links AS (
    SELECT d.objid AS seq, d.refobjid AS rel
      FROM pg_catalog.pg_depend d
     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
       AND d.deptype IN ('a', 'i')
    UNION
    SELECT d.refobjid, ad.adrelid
      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
)
SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END AS name,
       pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
       ARRAY(SELECT DISTINCT CASE WHEN rn.nspname = 'public' THEN r.relname ELSE rn.nspname || '.' || r.relname END
               FROM links l
               JOIN pg_catalog.pg_class r ON r.oid = coalesce(pg_catalog.pg_partition_root(l.rel)::oid, l.rel)
               JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
              WHERE l.seq = s.seqrelid AND r.relkind IN ('r', 'p')
              ORDER BY 1) AS tables
FROM pg_catalog.pg_sequence s
JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE CASE WHEN %(schema)s::text IS NULL
           THEN n.nspname NOT IN ('migrator', 'information_schema') AND n.nspname !~ '^pg_'
           ELSE n.nspname = %(schema)s::text END
ORDER BY 1
"""

BOUNDS_DDL = """
CREATE TABLE IF NOT EXISTS migrator.sequence_bounds (
    sequence_name text PRIMARY KEY,
    min_value bigint NOT NULL,
    max_value bigint NOT NULL,
    start_value bigint NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
)
"""


class SequenceRangeError(MigratorError):
    code = "sequence_range"


@dataclass
class SequenceState:
    name: str
    type: str
    tables: list[str] = field(default_factory=list)
    next_value: int = 0
    last_value: int = 0
    min_value: int = 0
    max_value: int = 0
    start_value: int = 0
    increment: int = 1
    status: str = IN_RANGE
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def read_sequences(conn: psycopg.Connection, schema: str | None = None) -> list[SequenceState]:
    """Every sequence of ``schema`` (None: of every application schema): its bounds, next value and the
    tables drawing from it. Named as tables are (migrator.cells.names: qualified outside ``public``)."""
    states = []
    for name, type_, start, increment, smin, smax, tables in conn.execute(SEQUENCES, {"schema": schema}).fetchall():
        last_value, is_called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            qualified(name))).fetchone()
        next_value = last_value + increment if is_called else last_value
        states.append(SequenceState(name=name, type=type_, tables=list(tables), next_value=int(next_value),
                                    last_value=int(last_value), min_value=int(smin), max_value=int(smax),
                                    start_value=int(start), increment=int(increment)))
    return states


def _moves_ids(state: SequenceState, dictionary) -> bool:
    """True when the sequence may hand out IDs of rows that move (organization tables, or unknown use)."""
    if dictionary is None or not state.tables:
        return True
    return any(t not in dictionary.tables or dictionary.tables[t].organization_scoped for t in state.tables)


def check_sequences(conn: psycopg.Connection, lo: int, hi: int, schema: str | None = None,
                    dictionary=None) -> list[SequenceState]:
    """Classify every sequence of ``schema`` (None: every application schema) against the cell's range
    ``[lo, hi]``; changes nothing."""
    states = read_sequences(conn, schema)
    for s in states:
        if not _moves_ids(s, dictionary):
            s.status, s.note = SKIPPED, "feeds only cell_local / cluster_wide tables (their rows never move)"
        elif s.increment <= 0:
            s.status, s.note = SKIPPED, "counts down: set its range by hand"
        elif not lo <= s.next_value <= hi:
            s.status = OUTSIDE
            s.note = f"next value {s.next_value} is outside the cell's range [{lo}, {hi}]"
        elif s.min_value < lo or s.max_value > hi:
            s.status = UNBOUNDED
            s.note = f"bounds [{s.min_value}, {s.max_value}] let it run past the cell's range [{lo}, {hi}]"
        else:
            s.status, s.note = IN_RANGE, ""
    return states


def set_sequence_ranges(conn: psycopg.Connection, lo: int, hi: int, schema: str | None = None,
                        only: set[str] | None = None, record: bool = False) -> list[str]:
    """Give the sequences of ``schema`` (or those named in ``only``) the range [lo, hi]; returns those changed.

    A sequence restarts at ``lo`` only when its next value is below ``lo``, so values already
    handed out in this range are kept; a sequence already past ``hi`` is an error. ``record``: keep
    each sequence's original bounds in ``migrator.sequence_bounds`` first (the first record wins).
    """
    changed = []
    if record:
        conn.execute(BOUNDS_DDL)
    for s in read_sequences(conn, schema):
        if only is not None and s.name not in only:
            continue
        ident = qualified(s.name)
        if s.increment <= 0:
            log.warning("sequence %s counts down; left alone", dotted(s.name))
            continue
        if hi > _TYPE_MAX.get(s.type, 2**63 - 1):
            raise SequenceRangeError(
                f"sequence {dotted(s.name)} is {s.type}: it cannot hold the cell's range [{lo}, {hi}]",
                f"make the column and the sequence bigint (ALTER SEQUENCE {s.name} AS bigint)",
            )
        if s.last_value > hi:
            raise SequenceRangeError(
                f"sequence {dotted(s.name)} is at {s.last_value}, beyond the cell's range [{lo}, {hi}]",
                "this database holds IDs of another range: check that the cell's dsn points at the right database",
            )
        restart = s.next_value < lo
        if (s.min_value, s.max_value, s.start_value) == (lo, hi, lo) and not restart:
            continue
        if record:
            conn.execute(
                """INSERT INTO migrator.sequence_bounds (sequence_name, min_value, max_value, start_value)
                   VALUES (%s, %s, %s, %s) ON CONFLICT (sequence_name) DO NOTHING""",
                (s.name, s.min_value, s.max_value, s.start_value))
        stmt = sql.SQL("ALTER SEQUENCE {} MINVALUE {} MAXVALUE {} START WITH {}").format(
            ident, sql.Literal(lo), sql.Literal(hi), sql.Literal(lo))
        if restart:
            stmt = stmt + sql.SQL(" RESTART WITH {}").format(sql.Literal(lo))
        conn.execute(stmt)
        changed.append(s.name)
    return changed


def restore_sequence_bounds(conn: psycopg.Connection, schema: str | None = None) -> list[str]:
    """Put back the bounds recorded in ``migrator.sequence_bounds``; the position is kept.

    IDs handed out meanwhile stay handed out: a sequence never goes back.
    """
    if not conn.execute("SELECT pg_catalog.to_regclass('migrator.sequence_bounds') IS NOT NULL").fetchone()[0]:
        return []
    present = {s.name: s for s in read_sequences(conn, schema)}
    restored = []
    rows = conn.execute("SELECT sequence_name, min_value, max_value, start_value FROM migrator.sequence_bounds "
                        "ORDER BY 1").fetchall()
    for name, smin, smax, start in rows:
        s = present.get(name)
        if s is None:
            continue  # dropped by the application meanwhile
        if (s.min_value, s.max_value, s.start_value) == (smin, smax, start):
            continue
        # The recorded bounds, widened if the sequence has moved outside them since.
        low = min(smin, s.last_value)
        high = max(smax, s.last_value)
        conn.execute(sql.SQL("ALTER SEQUENCE {} MINVALUE {} MAXVALUE {} START WITH {}").format(
            qualified(name), sql.Literal(low), sql.Literal(high), sql.Literal(start)))
        restored.append(name)
    return restored
