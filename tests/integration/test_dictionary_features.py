"""Dictionary features real schemas need, on Storefront (tests/schemas/storefront), not the sample schema.

One source cell built by Storefront's own SQL scripts (three tenants) and one empty target cell with
the same schema; the copier, verifier and guard run on them directly (no worker needed):
alternative sharding keys, keys through four hops resolved in SQL, a declaratively partitioned
table, polymorphic references without foreign keys, columns of every common type (NULL anywhere),
keys that are not called ``id`` (uuid, text, composite), generated columns and identity columns.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from migrator.cells.guard import FROZEN_SQLSTATE, freeze_org, install_guard, unfreeze_org
from migrator.cells.introspect import introspect
from migrator.cells.uninstall import uninstall_cell
from migrator.copy.rows import copy_batch, copy_range, last_key, plan_ranges
from migrator.copy.spec import stabilize_session, table_specs
from migrator.dictionary import load_dictionary
from migrator.dictionary.check import check_schema
from migrator.fleet.databases import create_database, drop_database, unique_name
from migrator.verify.checksums import range_checksum
from tests.schemas import storefront

pytestmark = pytest.mark.integration

MOVED, BYSTANDER, PARTITIONED = 1, 2, 3  # tenant ids in the source cell (its IDs start at 1)

# What each table's rows of a tenant are, written by hand with joins (the dictionary must agree).
BY_HAND = {
    "tenants": "SELECT t.tenant_id FROM tenants t WHERE t.tenant_id = %(org)s",
    "accounts": "SELECT a.account_id FROM accounts a WHERE a.tenant_id = %(org)s",
    "api_keys": "SELECT k.key_digest FROM api_keys k JOIN accounts a USING (account_id) WHERE a.tenant_id = %(org)s",
    "stores": "SELECT s.store_handle FROM stores s WHERE s.tenant_id = %(org)s",
    "customers": "SELECT c.customer_id FROM customers c JOIN stores s USING (store_handle) WHERE s.tenant_id = %(org)s",
    "orders": "SELECT o.order_id FROM orders o JOIN customers c USING (customer_id) JOIN stores s USING (store_handle)"
              " WHERE s.tenant_id = %(org)s",
    "line_items": "SELECT li.order_id, li.line_no FROM line_items li JOIN orders o USING (order_id)"
                  " JOIN customers c USING (customer_id) JOIN stores s USING (store_handle)"
                  " WHERE s.tenant_id = %(org)s",
    "notes": "SELECT n.note_id FROM notes n LEFT JOIN orders o ON o.order_id = n.order_id"
             " LEFT JOIN customers c ON c.customer_id = o.customer_id"
             " JOIN stores s ON s.store_handle = coalesce(n.store_handle, c.store_handle) WHERE s.tenant_id = %(org)s",
    "attachments": "SELECT x.attachment_id FROM attachments x JOIN accounts a ON a.account_id = x.uploaded_by"
                   " WHERE a.tenant_id = %(org)s",
    "activity": "SELECT a.activity_id, a.occurred_at FROM activity a WHERE a.tenant_id = %(org)s",
}


def connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    stabilize_session(conn)
    return conn


@pytest.fixture(scope="module")
def cells():
    """(source dsn, target dsn): Storefront with three tenants, and Storefront's empty schema."""
    names = [unique_name("cmt_sf_src"), unique_name("cmt_sf_tgt")]
    src, tgt = (create_database(n) for n in names)
    try:
        storefront.create_cell(src, tenants=3, orders_per_customer=2)
        storefront.create_cell(tgt, data=False)
        yield src, tgt
    finally:
        for n in names:
            drop_database(n)


@pytest.fixture(scope="module")
def dictionary():
    return load_dictionary(storefront.DICTIONARY)


@pytest.fixture(scope="module")
def copied(cells, dictionary):
    """Tenant MOVED copied table by table into the target, in key ranges of 7 rows (batches of up to 3).

    Returns the specs and, per table, the upper bounds of its ranges (keys of every kind: uuid, text,
    bytea, composite, (id, timestamptz)), which the source select and the target probe both use.
    """
    src_dsn, tgt_dsn = cells
    with connect(src_dsn) as src, connect(tgt_dsn) as tgt:
        live = introspect(src)
        specs = table_specs(dictionary, live)
        bounds: dict[str, list] = {}
        for name in dictionary.copy_order(live):
            ranges = plan_ranges(src, specs[name], MOVED, chunk_rows=7)
            bounds[name] = [r["hi"] for r in ranges[:-1]]
            for r in ranges:
                copy_range(src, tgt, specs[name], MOVED, lo=r["lo"], hi=r["hi"], position=None, batch_rows=3,
                           checkpoint=lambda *_: None)
    return specs, bounds


def rows_text(conn, spec, org: int) -> list[str]:
    """The organization's rows of a table as text, every column (generated ones too), in key order."""
    q = sql.SQL("SELECT t::text FROM {} AS t WHERE {} ORDER BY {}").format(spec.ident, spec.predicate,
                                                                           spec.pk_cols("t"))
    return [r[0] for r in conn.execute(q, {"org": org})]


# ------------------------------------------------------------------------- the dictionary itself


def test_storefront_dictionary_classifies_its_schema(cells, dictionary):
    with connect(cells[0]) as conn:
        live = introspect(conn)
    assert dictionary.root_table == "tenants" and dictionary.root_key(live) == "tenant_id"
    assert check_schema(dictionary, live) == []
    assert set(dictionary.org_tables()) == set(storefront.ORG_TABLES)
    # partitions are folded into their parent, whose key includes the partition key
    assert "activity" in live.tables and not any(t.startswith("activity_") for t in live.tables)
    assert live.tables["activity"].partitioned and live.tables["activity"].primary_key == ["activity_id", "occurred_at"]
    order = dictionary.copy_order(live)
    for parent, child in (("tenants", "accounts"), ("stores", "customers"), ("customers", "orders"),
                          ("orders", "line_items"), ("orders", "notes"), ("stores", "notes"),
                          ("accounts", "attachments"), ("accounts", "notes"), ("accounts", "api_keys"),
                          ("tenants", "activity")):
        assert order.index(parent) < order.index(child), (parent, child)


def test_multi_hop_and_alternative_keys_select_exactly_the_tenants_rows(cells, dictionary):
    with connect(cells[0]) as conn:
        live = introspect(conn)
        specs = table_specs(dictionary, live)
        # line_items -> orders -> customers -> stores -> tenants: nested subqueries, resolved in SQL
        text = dictionary.org_predicate("line_items", live).as_string(conn)
        assert text.count(" IN (SELECT ") == 3 and '"tenant_id" = %(org)s' in text
        assert " OR " in dictionary.org_predicate("notes", live).as_string(conn)
        totals = {name: 0 for name in specs}
        for org in (MOVED, BYSTANDER, PARTITIONED):
            for name, spec in specs.items():
                by_dictionary = sorted(tuple(r) for r in conn.execute(spec.pk_select(), {"org": org}))
                by_hand = sorted(tuple(r) for r in conn.execute(BY_HAND[name], {"org": org}))
                assert by_dictionary == by_hand and by_hand, (name, org)
                totals[name] += len(by_hand)
                # and back: the organization of each row, as the freeze guard computes it
                of_row = dictionary.org_of_row_sql(name, live, "t")
                wrong = conn.execute(sql.SQL("SELECT count(*) FROM {} AS t WHERE ({}) AND {} IS DISTINCT FROM %(org)s")
                                     .format(spec.ident, spec.predicate, of_row), {"org": org}).fetchone()[0]
                assert wrong == 0, (name, org)
        for name, total in totals.items():  # every row belongs to exactly one tenant
            assert total == conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()[0]
        # both alternatives are really used
        assert conn.execute("SELECT count(*) FILTER (WHERE order_id IS NOT NULL) > 0 AND "
                            "count(*) FILTER (WHERE store_handle IS NOT NULL) > 0 FROM notes").fetchone()[0]


def test_guard_follows_alternative_and_multi_hop_keys(cells, dictionary):
    """Freeze tenant MOVED in a copy of the source: writes through either alternative key and four hops refuse."""
    name = unique_name("cmt_sf_guard")
    dsn = create_database(name)
    try:
        storefront.create_cell(dsn, tenants=2, orders_per_customer=1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            live = introspect(conn)
            install_guard(conn, dictionary, live)
            freeze_org(conn, MOVED, "tok")
            for org, refused in ((MOVED, True), (BYSTANDER, False)):
                for stmt in (
                    "UPDATE notes n SET body = body || '!' WHERE n.store_handle IN "
                    "(SELECT store_handle FROM stores WHERE tenant_id = %(org)s)",
                    "UPDATE notes n SET body = body || '!' FROM orders o JOIN customers c USING (customer_id) "
                    "JOIN stores s USING (store_handle) WHERE n.order_id = o.order_id AND s.tenant_id = %(org)s",
                    "UPDATE line_items li SET quantity = quantity + 1 FROM orders o "
                    "JOIN customers c USING (customer_id) JOIN stores s USING (store_handle) "
                    "WHERE li.order_id = o.order_id AND s.tenant_id = %(org)s",
                    "DELETE FROM activity WHERE tenant_id = %(org)s AND occurred_at >= '2026-01-01'",
                ):
                    if refused:
                        with pytest.raises(psycopg.Error) as exc:
                            conn.execute(stmt, {"org": org})
                        assert exc.value.sqlstate == FROZEN_SQLSTATE, stmt
                    else:
                        assert conn.execute(stmt, {"org": org}).rowcount > 0, stmt
            # a write straight into a partition is refused too (row triggers are cloned onto partitions)
            with pytest.raises(psycopg.Error) as exc:
                conn.execute("UPDATE activity_2024 SET action = 'x' WHERE tenant_id = %s", (MOVED,))
            assert exc.value.sqlstate == FROZEN_SQLSTATE
            unfreeze_org(conn, MOVED)
            conn.execute("UPDATE notes SET body = body || '.'")
            result = uninstall_cell(conn, dictionary)
            assert any(r.startswith("schema migrator") for r in result["removed"])
            assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'migrator%'").fetchone()[0] == 0
    finally:
        drop_database(name)


# ------------------------------------------------------------------------- copy and verify


def test_every_type_and_key_kind_survives_copy_and_verify(cells, copied, dictionary):
    specs, bounds = copied
    with connect(cells[0]) as src, connect(cells[1]) as tgt:
        for name, spec in specs.items():
            source_rows = rows_text(src, spec, MOVED)
            assert source_rows, name
            # every column, generated ones included, arrives identical (text form in a stable session)
            assert rows_text(tgt, spec, MOVED) == source_rows, name
            assert range_checksum(tgt, spec, MOVED, None, None) == range_checksum(src, spec, MOVED, None, None)
            # key ranges over uuid, text, bytea, composite and (id, timestamptz) keys: ordered, real keys,
            # and each range verifies on its own
            keys = bounds[name]
            assert len(keys) == -(-len(source_rows) // 7) - 1, name
            for prev, key in zip(keys, keys[1:], strict=False):
                assert src.execute(sql.SQL("SELECT {} < {}").format(spec.key_literal(prev), spec.key_literal(key))
                                   ).fetchone()[0], (name, prev, key)
            for key in keys:  # each bound names a real row (the key round-trips through JSON)
                assert src.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE ROW({}) = {})").format(
                    spec.ident, spec.pk_cols("t"), spec.key_literal(key))).fetchone()[0], (name, key)
            for lo, hi in zip([None, *keys], [*keys, None], strict=True):
                assert range_checksum(tgt, spec, MOVED, lo, hi) == range_checksum(src, spec, MOVED, lo, hi)
        # the bystanders stayed home; only the moved tenant is in the target
        assert tgt.execute("SELECT array_agg(tenant_id) FROM tenants").fetchone()[0] == [MOVED]
        # NULL anywhere: the moved rows carry NULLs in every nullable column the data sets to NULL
        assert tgt.execute("SELECT count(*) FROM orders WHERE gift_note IS NULL AND placed_at IS NULL").fetchone()[0]
        assert tgt.execute("SELECT count(*) FROM line_items WHERE 0.2 = ANY (tax_rates) AND "
                           "array_position(tax_rates, NULL) = 2").fetchone()[0]
        assert tgt.execute("SELECT count(*) FROM orders WHERE status_history = '{cart,NULL,paid}'").fetchone()[0]


def test_generated_and_identity_columns(cells, copied):
    specs, _ = copied
    assert "line_total" not in specs["line_items"].columns and "email_normalized" not in specs["accounts"].columns
    assert specs["orders"].identity_always and specs["tenants"].identity_always
    assert specs["attachments"].identity_always_columns == ("display_no",)
    assert "display_no" not in specs["attachments"].update_columns
    assert not specs["activity"].identity_always  # GENERATED BY DEFAULT
    with connect(cells[0]) as src, connect(cells[1]) as tgt:
        for query in ("SELECT tenant_id FROM tenants WHERE tenant_id = %(org)s",
                      "SELECT array_agg(display_no ORDER BY display_no) FROM attachments x JOIN accounts a "
                      "ON a.account_id = x.uploaded_by WHERE a.tenant_id = %(org)s",
                      "SELECT sum(li.line_total), count(*) FROM line_items li JOIN orders o USING (order_id) "
                      "JOIN customers c USING (customer_id) JOIN stores s USING (store_handle) "
                      "WHERE s.tenant_id = %(org)s",
                      "SELECT array_agg(email_normalized ORDER BY email_normalized) FROM accounts "
                      "WHERE tenant_id = %(org)s"):
            assert tgt.execute(query, {"org": MOVED}).fetchone() == src.execute(query, {"org": MOVED}).fetchone()
        # the target's own identity sequences were not consumed by the copy
        assert tgt.execute("SELECT last_value, is_called FROM orders_order_id_seq").fetchone() == (1, False)


@pytest.mark.parametrize("table", ["tenants", "orders", "line_items", "accounts", "api_keys", "activity", "notes",
                                   "attachments"])
def test_a_batch_copied_again_is_upserted_and_changes_nothing(cells, copied, table):
    """The upsert path (a batch re-run after a crash): identity ALWAYS keys, and attachments.display_no, an
    identity ALWAYS column outside the key that ``DO UPDATE SET`` must leave out; generated columns, partitions."""
    specs, _ = copied
    spec = specs[table]
    with connect(cells[0]) as src, connect(cells[1]) as tgt:
        before = range_checksum(tgt, spec, MOVED, None, None)
        upto = last_key(src, spec, MOVED, None, None)
        result = copy_batch(src, tgt, spec, MOVED, None, upto)
        assert result.path == "upsert" and result.rows == before.rows
        assert range_checksum(tgt, spec, MOVED, None, None) == before
        assert rows_text(tgt, spec, MOVED) == rows_text(src, spec, MOVED)


def test_partitioned_table_is_split_copied_and_verified_through_its_parent(cells, copied):
    """Key ranges over (activity_id, occurred_at) for tenant PARTITIONED, copied range by range."""
    specs, _ = copied
    spec = specs["activity"]
    with connect(cells[0]) as src, connect(cells[1]) as tgt:
        ranges = plan_ranges(src, spec, PARTITIONED, chunk_rows=8)
        assert len(ranges) >= 3 and all(len(r["hi"]) == 2 for r in ranges[:-1])
        for r in ranges:
            copy_range(src, tgt, spec, PARTITIONED, lo=r["lo"], hi=r["hi"], position=None, batch_rows=5,
                       checkpoint=lambda *_: None)
            assert range_checksum(tgt, spec, PARTITIONED, r["lo"], r["hi"]) == \
                range_checksum(src, spec, PARTITIONED, r["lo"], r["hi"])
        per_partition = ("SELECT tableoid::regclass::text, count(*) FROM activity WHERE tenant_id = %s "
                         "GROUP BY 1 ORDER BY 1")
        placed = tgt.execute(per_partition, (PARTITIONED,)).fetchall()
        assert placed == src.execute(per_partition, (PARTITIONED,)).fetchall()
        assert {p for p, _ in placed} == {"activity_2024", "activity_2025", "activity_default"}


def test_polymorphic_references_are_carried_as_they_are(cells, copied):
    with connect(cells[0]) as src, connect(cells[1]) as tgt:
        for query in ("SELECT array_agg((record_type, record_id) ORDER BY attachment_id) FROM attachments x "
                      "JOIN accounts a ON a.account_id = x.uploaded_by WHERE a.tenant_id = %(org)s",
                      "SELECT array_agg((subject_type, subject_id) ORDER BY activity_id) FROM activity "
                      "WHERE tenant_id = %(org)s"):
            value = src.execute(query, {"org": MOVED}).fetchone()
            assert value[0] and tgt.execute(query, {"org": MOVED}).fetchone() == value
        # no foreign key stands behind them: a dangling reference is carried too
        constraints = {r[0] for r in tgt.execute("SELECT conname FROM pg_constraint "
                                                 "WHERE conrelid = 'attachments'::regclass AND contype = 'f'")}
        assert constraints == {"attachments_uploaded_by_fkey"}
