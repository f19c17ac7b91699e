"""The plans of the per-organization queries, read from PostgreSQL itself (``auto_explain``).

One cell whose ``items`` table (300,000 rows, built in bulk) belongs 80 % to one organization and
0.07 % to another: the copy, checksum, count, split, collision and delete queries must find the
small organization's rows through the sharding-key indexes (no sequential scan of ``items``), and
read the large one's in one pass (no nested loop probing row by row). ``events`` has no index on
its sharding key: it is always scanned, and ``unindexed_keys`` says so (ADR 0017).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from migrator.cells.introspect import introspect
from migrator.copy.keys import colliding_keys
from migrator.copy.rows import copy_range, count_rows, delete_range, plan_ranges
from migrator.copy.spec import INDEX, SCAN, choose_path, stabilize_session, table_specs
from migrator.dictionary import Dictionary
from migrator.dictionary.check import check_advice
from migrator.fleet.databases import create_database, drop_database, unique_name
from migrator.verify.checksums import range_checksums

pytestmark = pytest.mark.integration

BIG, SMALL = 1, 2  # organization ids: BIG owns 80 % of items, SMALL 200 of its 300,000 rows

SCHEMA = """
CREATE TABLE orgs (id bigint PRIMARY KEY, name text);
CREATE TABLE projects (id bigint PRIMARY KEY, org_id bigint NOT NULL REFERENCES orgs, name text);
CREATE INDEX projects_org_id ON projects (org_id);
CREATE TABLE items (id bigint PRIMARY KEY, project_id bigint NOT NULL REFERENCES projects, body text,
                    n integer);
CREATE INDEX items_project_id ON items (project_id);
CREATE TABLE events (id bigint PRIMARY KEY, project_id bigint NOT NULL, kind text);
"""
DATA = """
INSERT INTO orgs SELECT g, 'org ' || g FROM generate_series(1, 301) g;
-- BIG: projects 1..1200; every other organization: one project (1200 + org id - 1)
INSERT INTO projects SELECT g, 1, 'p' || g FROM generate_series(1, 1200) g;
INSERT INTO projects SELECT 1199 + o, o, 'p' FROM generate_series(2, 301) o;
INSERT INTO items SELECT g, 1 + g % 1200, repeat('x', 40), g FROM generate_series(1, 240000) g;
INSERT INTO items SELECT 240000 + g, 1201 + g % 300, repeat('y', 40), g FROM generate_series(1, 60000) g;
INSERT INTO events SELECT g, 1 + g % 1500, 'e' FROM generate_series(1, 30000) g;
ANALYZE;
"""
DICTIONARY = {"version": 1, "root": "orgs", "tables": {
    "orgs": {"root": True},
    "projects": {"sharding_key": {"org_id": "orgs"}},
    "items": {"sharding_key": {"project_id": "projects"}},
    "events": {"sharding_key": {"project_id": "projects"}},
}}


def connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    stabilize_session(conn)
    return conn


@pytest.fixture(scope="module")
def cell():
    names = [unique_name("cmpl"), unique_name("cmpl")]
    dsns = [create_database(n) for n in names]
    try:
        for i, dsn in enumerate(dsns):
            with connect(dsn) as conn:
                conn.execute(SCHEMA)
                if i == 0:
                    conn.execute(DATA)
        yield dsns
    finally:
        for n in names:
            drop_database(n)


@pytest.fixture(scope="module")
def dictionary():
    return Dictionary.from_mapping(DICTIONARY)


def copy_parents(src, tgt, specs, org: int) -> None:
    """The organization's rows of orgs and projects (the target resolves items' keys through them)."""
    for name in ("orgs", "projects"):
        copy_range(src, tgt, specs[name], org, lo=None, hi=None, position=None, batch_rows=10_000,
                   checkpoint=lambda *_: None)


class Plans:
    """Every plan a connection's statements run with, sent back as notices by auto_explain."""

    def __init__(self, conn):
        self.plans: list[str] = []
        conn.add_notice_handler(lambda diag: self.plans.append(diag.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET auto_explain.log_level = 'notice'")

    def of(self, table: str) -> list[str]:
        """The plans since the last call that read ``table`` (the planner's own EXPLAINs left out)."""
        out = [p for p in self.plans if (f" on {table} " in p or f" on {table}\n" in p)
               and "Query Text: EXPLAIN" not in p]
        self.plans = []
        return out


def test_a_small_organization_is_found_through_the_indexes(cell, dictionary):
    src_dsn, tgt_dsn = cell
    with connect(src_dsn) as src, connect(tgt_dsn) as tgt:
        specs = table_specs(dictionary, introspect(src))
        items = specs["items"]
        assert choose_path(src, items, SMALL) == INDEX
        copy_parents(src, tgt, specs, SMALL)
        plans = Plans(src)
        assert count_rows(src, items, SMALL) == 200
        # a count reads the sharding-key index alone: no heap page is visited for it once vacuumed (an
        # organization spread over the whole table would make a bitmap heap scan read nearly every page)
        [counted] = [p for p in plans.plans if "count(*)" in p and " on items" in p and "EXPLAIN" not in p]
        assert "Index Only Scan using items_project_id" in counted and "Bitmap Heap Scan" not in counted, counted
        [r] = plan_ranges(src, items, SMALL, chunk_rows=150_000)
        copied = copy_range(src, tgt, items, SMALL, lo=None, hi=None, position=None, batch_rows=64,
                            checkpoint=lambda *_: None)
        assert copied == 200 and r["total"] == 200
        source, target = range_checksums(src, tgt, items, SMALL, None, None)
        assert source == target and source.rows == 200
        seen = plans.of("items")
        # count, edge keys, split points, 4 batches of 64, checksum: all read items through its index
        assert len(seen) >= 6 and any("hash_record_extended" in p for p in seen), seen
        for plan in seen:  # through its sharding-key index, or its key index for a narrow batch
            assert "Seq Scan on items" not in plan and ("items_project_id" in plan or "items_pkey" in plan), plan
        assert any("items_project_id" in p for p in seen)
        # the collision check against a big table (the source itself, on a second connection)
        with connect(src_dsn) as big:
            bplans = Plans(big)
            assert len(colliding_keys(src, big, items, SMALL, limit=3)) == 3
            [plan] = [p for p in bplans.of("items") if "LIMIT" in p]
            assert "Seq Scan on items" not in plan and "Hash Join" not in plan, plan
        delete_range(src, items, SMALL, None, None, batch=50)
        seen = plans.of("items")
        assert any("DELETE" in p for p in seen), seen
        for plan in seen:
            assert "Seq Scan on items" not in plan and "Hash Join" not in plan, plan
        assert count_rows(src, items, SMALL) == 0


def test_an_organization_that_is_most_of_the_table_is_read_in_one_pass(cell, dictionary):
    src_dsn, tgt_dsn = cell
    with connect(src_dsn) as src, connect(tgt_dsn) as tgt:
        specs = table_specs(dictionary, introspect(src))
        items = specs["items"]
        assert choose_path(src, items, BIG) == SCAN
        copy_parents(src, tgt, specs, BIG)
        plans, tplans = Plans(src), Plans(tgt)
        assert count_rows(src, items, BIG) == 240_000
        ranges = plan_ranges(src, items, BIG, chunk_rows=150_000)
        assert [r["total"] for r in ranges] == [150_000, 90_000]
        for r in ranges:
            copy_range(src, tgt, items, BIG, lo=r["lo"], hi=r["hi"], position=None, batch_rows=200_000,
                       checkpoint=lambda *_: None)
        # the target has not analyzed these rows: its side is planned with the source's estimate
        source, target = range_checksums(src, tgt, items, BIG, None, None)
        assert source == target and source.rows == 240_000
        for side, seen in (("source", plans.of("items")), ("target", tplans.of("items"))):
            [checksum] = [p for p in seen if "hash_record_extended" in p]
            assert "Seq Scan on items" in checksum, checksum
            # every statement that reads the organization's rows (count, split, copy, checksum); the
            # edge-key lookups (ORDER BY … LIMIT 1) keep the planner's walk that stops at the first row
            whole = [p for p in seen if "LIMIT 1)" not in p and not p.rstrip().endswith("LIMIT 1")
                     and "LIMIT 1\n" not in p]
            if side == "source":  # count, split points, two COPY batches, the checksum
                assert sum("COPY (" in p for p in whole) == 2 and len(whole) >= 5, seen
            for plan in whole:
                assert "Nested Loop" not in plan, plan
                assert "items_project_id" not in plan, plan
        assert len(colliding_keys(src, tgt, items, BIG, limit=2)) == 2
        for plan in tplans.of("items"):
            assert "Nested Loop" not in plan, plan


def test_a_sharding_key_without_an_index_is_always_scanned_and_reported(cell, dictionary):
    src_dsn, _ = cell
    with connect(src_dsn) as src:
        live = introspect(src)
        specs = table_specs(dictionary, live)
        assert specs["events"].key_predicate is None
        assert choose_path(src, specs["events"], SMALL) == SCAN
        assert dictionary.unindexed_keys("events", live) == [("events", "project_id")]
        [advice] = check_advice(dictionary, live)
        assert advice.table == "events" and advice.column == "project_id"
        assert "CREATE INDEX" in advice.hint
        plans = Plans(src)
        assert count_rows(src, specs["events"], SMALL) == 20
        assert all("Nested Loop" not in p for p in plans.of("events"))


def test_the_index_path_selects_the_same_rows(cell, dictionary):
    src_dsn, _ = cell
    with connect(src_dsn) as src:
        specs = table_specs(dictionary, introspect(src))
        for spec in specs.values():
            if spec.key_predicate is None:
                continue
            for org in (BIG, 3, 300):
                q = "SELECT {pk} FROM {t} AS t WHERE {pred} ORDER BY {pk}"
                chain = src.execute(sql.SQL(q).format(pk=spec.pk_cols("t"), t=spec.ident, pred=spec.predicate),
                                    {"org": org}).fetchall()
                keys = src.execute(sql.SQL(q).format(pk=spec.pk_cols("t"), t=spec.ident, pred=spec.key_predicate),
                                   {"org": org}).fetchall()
                assert chain == keys and chain, (spec.name, org)
