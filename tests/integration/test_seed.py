"""``migrator seed`` against real cell databases: rows in every table, matching blobs, the cell's ID range."""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest
from psycopg import sql

from migrator.blobs.store import open_store
from migrator.errors import MigratorError
from migrator.fleet.processes import BIN
from migrator.fleet.services import child_env
from migrator.sample.seed import (
    MIN_ORG_ROWS,
    ORG_TABLES,
    plan_blob_counts,
    plan_org_sizes,
    plan_tables,
    seed_organizations,
    split_blobs,
)

pytestmark = pytest.mark.integration

ID_TABLES = [t for t in ORG_TABLES if t != "label_links"]

# Per table, the rows of one organization (walking the sharding keys up to organizations).
ORG_ROWS_SQL = {
    "organizations": "SELECT * FROM organizations WHERE id = %(org)s",
    "namespaces": "SELECT * FROM namespaces WHERE organization_id = %(org)s",
    "projects": "SELECT p.* FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
    "WHERE n.organization_id = %(org)s",
    **{
        t: f"SELECT x.* FROM {t} x JOIN projects p ON p.id = x.project_id "  # noqa: S608 - constant names
        "JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = %(org)s"
        for t in ("issues", "merge_requests", "notes", "labels", "uploads", "lfs_objects", "ci_pipelines")
    },
    "label_links": "SELECT x.* FROM label_links x JOIN labels l ON l.id = x.label_id JOIN projects p "
    "ON p.id = l.project_id JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = %(org)s",
    "ci_builds": "SELECT x.* FROM ci_builds x JOIN ci_pipelines c ON c.id = x.pipeline_id JOIN projects p "
    "ON p.id = c.project_id JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = %(org)s",
}


def _org_snapshot(conn: psycopg.Connection, org: int) -> dict[str, tuple[int, str]]:
    """Per table: (rows, md5 of all the organization's rows in a stable order)."""
    snap = {}
    for table, query in ORG_ROWS_SQL.items():
        row = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) FROM ({query}) r",  # noqa: S608
            {"org": org},
        ).fetchone()
        snap[table] = (row[0], row[1])
    return snap


@pytest.fixture
def in_process_fleet(fleet, monkeypatch):
    """The fleet, provisioned, with the Topology Service used in-process (no gRPC server)."""
    from migrator.config import clear_settings_cache
    from migrator.control.engine import upgrade_control_db

    monkeypatch.setenv("MIGRATOR_TOPOLOGY__ADDRESS", "")
    clear_settings_cache()
    upgrade_control_db(fleet.control_dsn)
    fleet.init()
    return fleet


def _topology(settings):
    from migrator.topology.client import topology_client

    return topology_client(settings)


# --- planning -----------------------------------------------------------------------------------


def test_plan_without_skew_gives_every_org_exactly_rows():
    assert plan_org_sizes(4, 5_000, skew=False) == [5_000] * 4
    for total in (MIN_ORG_ROWS, 200, 10_000, 1_000_000):
        for blobs in (0, 1, 3, 20):
            plan = plan_tables(total, split_blobs(min(blobs, max(0, (total - MIN_ORG_ROWS) // 2))))
            assert sum(plan.values()) == total, (total, blobs, plan)
            assert plan["organizations"] == 1
            assert plan["label_links"] <= plan["labels"] * (plan["issues"] + plan["merge_requests"])


def test_plan_with_skew_has_one_big_org_and_several_small():
    sizes = plan_org_sizes(5, 10_000, skew=True)
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > 2 * 10_000 > 4 * sizes[-1]
    assert abs(sum(sizes) - 50_000) < 10
    assert sum(plan_blob_counts(5, 20, skew=True)) == pytest.approx(100, abs=3)
    assert plan_blob_counts(3, 0) == [0, 0, 0]
    assert plan_blob_counts(3, 1) == [3, 3, 3]  # one upload, LFS object and artifact each


def test_plan_notes_and_issues_are_the_largest_tables():
    plan = plan_tables(100_000, split_blobs(20))
    ranked = sorted(plan, key=plan.get, reverse=True)
    assert ranked[0] == "notes"
    assert set(ranked[1:4]) >= {"issues"}
    assert plan["label_links"] > plan["merge_requests"]


# --- seeding ------------------------------------------------------------------------------------


def test_seed_fills_every_table_with_blobs_ids_and_routes(in_process_fleet):
    fleet = in_process_fleet
    settings = fleet.settings()
    calls = []
    seeded = seed_organizations(settings, "cell-2", orgs=3, rows=3_000, blobs=8, blob_bytes=2048, seed=7,
                                progress=lambda desc, n: calls.append((desc, n)))
    assert len(seeded) == 3
    assert sum(n for _, n in calls) == sum(o.rows for o in seeded)
    assert [o.rows for o in seeded] == plan_org_sizes(3, 3_000, skew=True)
    topology = _topology(settings)
    cell = topology.get_cell("cell-2")
    store = open_store(settings, "cell-2")

    with psycopg.connect(fleet.cell_dsns["cell-2"]) as conn:
        for org in seeded:
            assert org.cell == "cell-2"
            # every organization-scoped table has rows, and the reported counts are the real ones
            snap = _org_snapshot(conn, org.organization_id)
            assert {t: n for t, (n, _) in snap.items()} == org.rows_by_table
            assert all(n > 0 for n in org.rows_by_table.values()), org.rows_by_table
            assert topology.classify(org.organization_id).cell == "cell-2"
            assert org.blobs > 0 and org.blob_bytes > 0

        # blob rows reference stored objects with the right checksum and size
        blob_rows = conn.execute(
            "SELECT file_key, sha256, size FROM uploads UNION ALL SELECT file_key, sha256, size FROM lfs_objects "
            "UNION ALL SELECT artifact_key, artifact_sha256, artifact_size FROM ci_builds "
            "WHERE artifact_key IS NOT NULL"
        ).fetchall()
        assert len(blob_rows) == sum(o.blobs for o in seeded)
        assert sum(r[2] for r in blob_rows) == sum(o.blob_bytes for o in seeded)
        for key, sha, size in blob_rows:
            assert key.startswith("org-")
            assert store.sha256(key) == sha
            assert store.stat(key).size == size
        assert len(list(store.keys())) == len(blob_rows)
        orgs_of_keys = {int(k.split("/")[0].removeprefix("org-")) for k, _, _ in blob_rows}
        assert orgs_of_keys == {o.organization_id for o in seeded}

        # every id sits in the cell's range (provisioned sequences), which other cells do not share
        for table in ID_TABLES:
            lo, hi = conn.execute(sql.SQL("SELECT min(id), max(id) FROM {}").format(sql.Identifier(table))).fetchone()
            assert cell.seq_min <= lo <= hi <= cell.seq_max, (table, lo, hi, cell)
        others = [topology.get_cell(n) for n in ("cell-1", "cell-3")]
        assert all(o.seq_max < cell.seq_min or o.seq_min > cell.seq_max for o in others)

        # the data exercises the column types a copier must carry
        checks = {
            "unicode text": "SELECT count(*) FROM issues WHERE title LIKE '%café crashes on 🚀 (日本)%'",
            "text[] with a NULL element":
                "SELECT count(*) FROM issues WHERE array_position(labels_cache, NULL) IS NOT NULL",
            "NULL text[]": "SELECT count(*) FROM issues WHERE labels_cache IS NULL",
            "jsonb objects": "SELECT count(*) FROM notes WHERE jsonb_typeof(position) = 'object'",
            "bytea with a zero byte": "SELECT count(*) FROM ci_builds WHERE position('\\x00'::bytea in trace_tail) > 0",
            "numeric": "SELECT count(*) FROM ci_builds WHERE coverage IS NOT NULL AND scale(coverage) = 2",
            "NULL numeric": "SELECT count(*) FROM issues WHERE time_estimate IS NULL",
            "subgroups": "SELECT count(*) FROM namespaces WHERE parent_id IS NOT NULL",
            "merge request notes": "SELECT count(*) FROM notes WHERE noteable_type = 'MergeRequest'",
            "merge request labels": "SELECT count(*) FROM label_links WHERE target_type = 'MergeRequest'",
        }
        for what, query in checks.items():
            assert conn.execute(query).fetchone()[0] > 0, what
        # polymorphic notes point at an issue / MR of their own project
        stray = conn.execute(
            "SELECT count(*) FROM notes n WHERE NOT EXISTS (SELECT 1 FROM issues i WHERE n.noteable_type = 'Issue' "
            "AND i.id = n.noteable_id AND i.project_id = n.project_id) AND NOT EXISTS (SELECT 1 FROM merge_requests "
            "m WHERE n.noteable_type = 'MergeRequest' AND m.id = n.noteable_id AND m.project_id = n.project_id)"
        ).fetchone()[0]
        assert stray == 0
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM application_settings").fetchone()[0] > 0


def test_second_seed_adds_orgs_and_leaves_existing_ones_alone(in_process_fleet):
    fleet = in_process_fleet
    settings = fleet.settings()
    first = seed_organizations(settings, "cell-1", orgs=2, rows=800, blobs=3, skew=False, seed=1)
    assert [o.rows for o in first] == [800, 800]
    with psycopg.connect(fleet.cell_dsns["cell-1"]) as conn:
        before = {o.organization_id: _org_snapshot(conn, o.organization_id) for o in first}
        shared = conn.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM application_settings)"
                              ).fetchone()
    blobs_before = set(open_store(settings, "cell-1").keys())

    second = seed_organizations(settings, "cell-1", orgs=2, rows=800, blobs=3, skew=False, seed=1)
    new_ids = {o.organization_id for o in second}
    assert new_ids.isdisjoint(before)
    assert min(new_ids) > max(before)
    with psycopg.connect(fleet.cell_dsns["cell-1"]) as conn:
        for org_id, snap in before.items():
            assert _org_snapshot(conn, org_id) == snap
        assert conn.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM application_settings)"
                            ).fetchone() == shared
        assert conn.execute("SELECT count(*) FROM organizations").fetchone()[0] == 4
    assert blobs_before < set(open_store(settings, "cell-1").keys())
    routes = {r.organization_id: r.cell for r in _topology(settings).list_routes()}
    assert all(routes[o.organization_id] == "cell-1" for o in first + second)


def test_seed_refuses_an_unprovisioned_cell(fleet, monkeypatch):
    monkeypatch.setenv("MIGRATOR_TOPOLOGY__ADDRESS", "")
    with pytest.raises(MigratorError) as info:
        seed_organizations(fleet.settings(), "cell-3", orgs=1, rows=100)
    assert "cell-3" in info.value.message
    assert "migrator cells init" in info.value.hint


def test_seed_refuses_too_few_rows(fleet):
    with pytest.raises(MigratorError, match="--rows"):
        seed_organizations(fleet.settings(), "cell-1", orgs=1, rows=MIN_ORG_ROWS - 1)


def test_cli_seed_json_over_grpc_topology(fleet, topology_server):
    fleet.init()
    env = child_env(fleet.config_path)
    proc = subprocess.run([str(BIN / "migrator"), "seed", "--cell", "cell-3", "--orgs", "2", "--rows", "400",
                           "--blobs", "2", "--seed", "3", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["cell"] == "cell-3"
    orgs = data["organizations"]
    assert len(orgs) == 2
    assert all(o["rows"] == sum(o["rows_by_table"].values()) for o in orgs)
    assert all(min(o["rows_by_table"].values()) > 0 for o in orgs)
    routes = {r.organization_id: r.cell for r in _topology(fleet.settings()).list_routes()}
    assert all(routes[o["organization_id"]] == "cell-3" for o in orgs)

    table = subprocess.run([str(BIN / "migrator"), "seed", "--cell", "cell-3", "--orgs", "1", "--rows", "300"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "Seeded 1 organization(s) in cell-3" in table.stdout

    bad = subprocess.run([str(BIN / "migrator"), "seed", "--cell", "nope"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0
    assert "unknown cell 'nope'" in bad.stderr
