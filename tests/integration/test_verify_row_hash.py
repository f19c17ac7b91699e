"""verify's row hash on real PostgreSQL: which columns are hashed as values, which as text, and that
the checksum is equal for equal data in two databases yet catches a change in any column."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from migrator.cells.introspect import introspect
from migrator.copy.spec import TableSpec, stabilize_session
from migrator.fleet.databases import create_database, drop_database, unique_name
from migrator.verify.checksums import range_checksum

pytestmark = pytest.mark.integration

# Enum labels get OIDs from the server-wide counter: the same label has a different OID in each
# database, so hashing an enum as a value (its OID) would make equal data differ.
SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'glad');
CREATE DOMAIN positive AS bigint CHECK (VALUE > 0);
CREATE COLLATION caseless (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE things (
    id bigint PRIMARY KEY,
    org_id bigint NOT NULL,
    amount numeric(12, 2),
    tags text[],
    weight positive,
    feeling mood,
    doc json,
    meta jsonb,
    spot point,
    handle text COLLATE caseless,
    seen timestamptz,
    flag bit(3)
);
"""

ROWS = """
INSERT INTO things
SELECT g, 1 + g % 2, g * 1.5, ARRAY['a' || g, 'b'], g, (ARRAY['sad', 'ok', 'glad']::mood[])[1 + g % 3],
       json_build_object('n', g), jsonb_build_object('n', g), point(g, g), 'Handle' || g,
       timestamptz '2024-01-01 00:00+00' + g * interval '1 minute', B'101'
FROM generate_series(1, 500) g
"""


@pytest.fixture
def two_databases():
    names = [unique_name("cmrh"), unique_name("cmrh")]
    try:
        dsns = [create_database(name) for name in names]
        for dsn in dsns:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SCHEMA)
                conn.execute(ROWS)
        yield dsns
    finally:
        for name in names:
            drop_database(name)


def _conn(dsn):
    conn = psycopg.connect(dsn, autocommit=True)
    stabilize_session(conn)
    return conn


def _spec(conn, hashed: bool = True) -> TableSpec:
    live = introspect(conn)
    info = live.tables["things"]
    columns = tuple(c.name for c in sorted(info.columns, key=lambda c: c.position))
    return TableSpec(name="things", columns=columns, pk=("id",), pk_types=("bigint",),
                     predicate=sql.SQL("t.org_id = %(org)s"),
                     hashed=tuple(c.hashable for c in sorted(info.columns, key=lambda c: c.position))
                     if hashed else None)


def test_only_value_hashed_builtin_types_are_hashed_as_values(two_databases):
    with _conn(two_databases[0]) as conn:
        live = introspect(conn)
        assert live.row_hash
        hashable = {c.name: c.hashable for c in live.tables["things"].columns}
    assert hashable == {
        "id": True, "org_id": True, "amount": True, "tags": True, "seen": True, "meta": True,
        "weight": True,  # a domain over bigint
        "feeling": False,  # an enum: its hash is the label's OID, different in every database
        "doc": False, "spot": False, "flag": False,  # json, point, bit: no extended hash function
        "handle": False,  # a nondeterministic collation: 'A' and 'a' would hash alike
    }


def test_equal_data_in_two_databases_checksums_equal(two_databases):
    with _conn(two_databases[0]) as a, _conn(two_databases[1]) as b:
        label_oid = "SELECT oid FROM pg_enum WHERE enumlabel = 'glad'"
        assert a.execute(label_oid).fetchone() != b.execute(label_oid).fetchone()
        spec = _spec(a)
        for org in (1, 2):
            left, right = range_checksum(a, spec, org, None, None), range_checksum(b, spec, org, None, None)
            assert left == right and left.rows == 250
        # the text method agrees with itself too
        text = _spec(a, hashed=False)
        assert range_checksum(a, text, 1, None, None) == range_checksum(b, text, 1, None, None)


@pytest.mark.parametrize("change", [
    "amount = amount + 0.01", "tags[2] = 'c'", "weight = weight + 1", "feeling = 'glad'",
    "doc = json_build_object('n', id + 1)", "meta = jsonb_build_object('n', id + 1)", "spot = point(0, 0)",
    "handle = lower(handle)", "seen = seen + interval '1 microsecond'", "flag = B'100'", "amount = NULL",
])
def test_a_change_in_any_column_changes_the_checksum(two_databases, change):
    with _conn(two_databases[0]) as a, _conn(two_databases[1]) as b:
        spec = _spec(a)
        before = range_checksum(b, spec, 1, None, None)
        assert range_checksum(a, spec, 1, None, None) == before
        assert b.execute("SELECT org_id, feeling FROM things WHERE id = 10").fetchone() == (1, "ok")
        b.execute(sql.SQL("UPDATE things SET {} WHERE id = 10").format(sql.SQL(change)))
        after = range_checksum(b, spec, 1, None, None)
        assert after.rows == before.rows
        assert after.checksum != before.checksum, change


def test_text_method_sql_and_hash_method_sql():
    spec = TableSpec(name="t1", columns=("id", "doc"), pk=("id",), pk_types=("bigint",),
                     predicate=sql.SQL("t.org_id = %(org)s"), hashed=(True, False))
    text = spec.checksum_sql().as_string(None)
    assert 'hash_record_extended(ROW("t"."id", CAST("t"."doc" AS text) COLLATE "C"), 0)' in text
    legacy = TableSpec(name="t1", columns=("id", "doc"), pk=("id",), pk_types=("bigint",),
                       predicate=sql.SQL("t.org_id = %(org)s")).checksum_sql().as_string(None)
    assert "md5(ROW" in legacy and "hash_record_extended" not in legacy
