"""preflight's unique-key check end to end: Storefront cells, a real worker, the real `migrator` command.

A tenant whose ``slug`` (a UNIQUE constraint on a non-key column) another tenant of the target already
holds is refused at preflight, named, and nothing changes: the move is rejected, the route stays, the
source stays writable, the target keeps exactly its rows. A partial unique index conflicts only where
its predicate holds in the target: once the target's row leaves it, the same move completes.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from migrator.topology.client import topology_client
from tests.integration.test_adopt_e2e import run_json
from tests.support.checks import org_checksums
from tests.support.moves import migrator, wait_move

pytestmark = pytest.mark.integration

PARTIAL = "CREATE UNIQUE INDEX orders_open_external_ref ON orders (external_ref) WHERE status <> 'cancelled'"


def _table_rows(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1")]
        count = sql.SQL("SELECT count(*) FROM {}")
        return {n: conn.execute(count.format(sql.Identifier(n))).fetchone()[0] for n in names}


def _refused(fleet, org: int, target: str, expect: list[str]) -> dict:
    """A dry run and a real move of ``org`` to ``target`` are refused naming ``expect``; returns the move."""
    dry = migrator(fleet, "move", "--org", str(org), "--to", target, "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    shown = " ".join((dry.stdout + dry.stderr).split())  # the console wraps long lines
    for text in expect:
        assert text in shown, shown
    result = migrator(fleet, "move", "--org", str(org), "--to", target, "--json", "--reason", "unique")
    assert result.returncode == 0, result.stdout + result.stderr
    move = wait_move(fleet.settings(), json.loads(result.stdout)["id"])
    assert move.state == "rejected" and move.step == "preflight"
    assert move.error_code == "unique_collision"
    for text in expect:
        assert text in move.error, move.error
    return move


def test_unique_collisions_refuse_the_move_and_change_nothing(storefront_fleet, storefront_worker):
    fleet = storefront_fleet
    settings = fleet.settings()
    block = fleet.extra["block"]
    for dsn in fleet.cell_dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(PARTIAL)
    run_json("cells", "init")
    for cell in fleet.cell_dsns:
        run_json("orgs", "discover", "--cell", cell, "--register")
    org, bystander = 1, block + 1
    src_dsn, tgt_dsn = fleet.cell_dsns["cell-1"], fleet.cell_dsns["cell-2"]
    with psycopg.connect(src_dsn, autocommit=True) as conn:
        slug = conn.execute("SELECT slug FROM tenants WHERE tenant_id = %s", (org,)).fetchone()[0]
        ref = conn.execute(
            "SELECT o.external_ref FROM orders o JOIN customers c USING (customer_id) JOIN stores s USING "
            "(store_handle) WHERE s.tenant_id = %s AND o.external_ref IS NOT NULL AND o.status <> 'cancelled' "
            "ORDER BY o.order_id LIMIT 1", (org,)).fetchone()[0]
    with psycopg.connect(tgt_dsn, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET slug = %s WHERE tenant_id = %s", (slug, bystander))
        their_order = conn.execute(
            "SELECT o.order_id FROM orders o JOIN customers c USING (customer_id) JOIN stores s USING (store_handle) "
            "WHERE s.tenant_id = %s ORDER BY o.order_id LIMIT 1", (bystander,)).fetchone()[0]
        conn.execute("UPDATE orders SET external_ref = %s, status = 'placed' WHERE order_id = %s", (ref, their_order))

    source_before = org_checksums(settings, "cell-1", org)
    target_before = _table_rows(tgt_dsn)
    bystander_before = org_checksums(settings, "cell-2", bystander)
    topology = topology_client(settings)
    route_before = topology.classify(org)

    # Both: a UNIQUE constraint on a non-key column, and the partial unique index (its predicate holds).
    _refused(fleet, org, "cell-2", [
        f"tenants: unique constraint tenants_slug_key (slug) = ({slug})",
        f"orders: unique index orders_open_external_ref (external_ref) WHERE status <> 'cancelled'::order_status "
        f"= ({ref})",
        "nothing was changed",
    ])
    # Nothing changed: the route, the source (and it is writable: no freeze, no guard), the target.
    route = topology.classify(org)
    assert (route.cell, route.state, route.version) == ("cell-1", "active", route_before.version)
    assert [h["action"] for h in topology.history(org)].count("freeze") == 0
    assert org_checksums(settings, "cell-1", org) == source_before
    assert _table_rows(tgt_dsn) == target_before
    assert org_checksums(settings, "cell-2", bystander) == bystander_before
    assert org_checksums(settings, "cell-2", org) == {name: (0, "0") for name in source_before}

    # The partial index alone: the target's tenant renamed, its order still open -> refused, named.
    with psycopg.connect(tgt_dsn, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET slug = 'renamed' WHERE tenant_id = %s", (bystander,))
    _refused(fleet, org, "cell-2", ["orders_open_external_ref"])

    # The target's order cancelled: outside the partial index, no conflict; the move completes.
    with psycopg.connect(tgt_dsn, autocommit=True) as conn:
        conn.execute("UPDATE orders SET status = 'cancelled' WHERE order_id = %s", (their_order,))
    dry = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--dry-run")
    assert dry.returncode == 0 and "unique keys: 3 checked in the target, no conflict" in dry.stdout, dry.stdout
    result = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json", "--reason", "unique")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["state"] == "completed"
    # tenants (slug), accounts (tenant_id, email), orders (external_ref) WHERE …
    assert detail["plan"]["unique_checks"] == {"checked": 3, "skipped": []}
    assert org_checksums(settings, "cell-2", org) == source_before
    assert topology.classify(org).cell == "cell-2"
