"""The row copier on real PostgreSQL: exact ranges, range batches, resume after a lost checkpoint,
the probe that keeps a first pass on the direct COPY path, and verify's two sides at once."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from migrator.cells.introspect import introspect
from migrator.copy.rows import (
    _target_has_rows,
    batch_bounds,
    copy_batch,
    copy_range,
    first_key,
    plan_ranges,
    split_points,
)
from migrator.copy.spec import stabilize_session, table_specs
from migrator.dictionary import load_dictionary
from migrator.sample.seed import seed_organizations
from migrator.verify.checksums import range_checksum, range_checksums
from tests.support.checks import duplicate_keys, org_checksums

pytestmark = pytest.mark.integration


def _conn(settings, cell):
    conn = psycopg.connect(settings.cell(cell).dsn, autocommit=True)
    stabilize_session(conn)
    return conn


def _specs(settings, conn):
    dictionary = load_dictionary(settings.dictionary_file())
    live = introspect(conn)
    return dictionary.copy_order(live), table_specs(dictionary, live)


@pytest.fixture
def seeded(provisioned):
    settings = provisioned.settings()
    [org] = seed_organizations(settings, "cell-1", orgs=1, rows=4000, blobs=6, skew=False, seed=5)
    return settings, org


def test_ranges_are_exact_and_batches_cover_each_range(seeded):
    settings, org = seeded
    oid = org.organization_id
    with _conn(settings, "cell-1") as src:
        order, specs = _specs(settings, src)
        for name in order:
            spec = specs[name]
            ranges = plan_ranges(src, spec, oid, chunk_rows=300)
            assert sum(r["total"] for r in ranges) == org.rows_by_table[name], name
            assert all(r["total"] <= 300 for r in ranges), name
            assert ranges[-1]["hi"] is None
            for r in ranges:
                bounds = batch_bounds(src, spec, oid, r["lo"], r["hi"], batch_rows=70)
                if r["total"] == 0:
                    assert bounds == []
                    continue
                points = split_points(src, spec, oid, r["lo"], r["hi"], 70)
                assert points[-1][1] == r["total"]  # the last point's ordinal is the range's row count
                assert bounds[-1] == points[-1][0]  # the last batch ends at the range's last key


def test_copy_in_small_batches_equals_the_source(seeded):
    settings, org = seeded
    oid = org.organization_id
    checkpoints = []
    with _conn(settings, "cell-1") as src, _conn(settings, "cell-2") as tgt:
        order, specs = _specs(settings, src)
        for name in order:
            for r in plan_ranges(src, specs[name], oid, chunk_rows=500):
                copy_range(src, tgt, specs[name], oid, lo=r["lo"], hi=r["hi"], position=None, batch_rows=120,
                           checkpoint=lambda key, rows, nbytes, n=name: checkpoints.append((n, key, rows)))
    assert org_checksums(settings, "cell-2", oid) == org_checksums(settings, "cell-1", oid)
    assert not duplicate_keys(settings, "cell-2")
    assert sum(rows for _, _, rows in checkpoints) == org.rows
    notes = [key for n, key, _ in checkpoints if n == "notes"]
    assert len(notes) >= org.rows_by_table["notes"] // 120  # really in batches
    assert notes == sorted(notes)
    links = [tuple(key) for n, key, _ in checkpoints if n == "label_links"]  # composite key, in key order
    assert len(links) > 1


def test_a_batch_whose_checkpoint_was_lost_is_copied_again_by_upsert(seeded):
    """Crash after the target committed a batch but before its checkpoint: the resumed unit re-runs
    that batch through staging + ON CONFLICT and the result is identical, nothing doubled."""
    settings, org = seeded
    oid = org.organization_id

    class Crash(Exception):
        pass

    with _conn(settings, "cell-1") as src, _conn(settings, "cell-2") as tgt:
        order, specs = _specs(settings, src)
        for name in order[:order.index("notes")]:  # the parents, so the predicate finds notes on the target
            copy_range(src, tgt, specs[name], oid, lo=None, hi=None, position=None, batch_rows=10_000,
                       checkpoint=lambda *_: None)
        spec = specs["notes"]
        done: list = []

        def checkpoint_then_crash(key, rows, nbytes):
            if len(done) == 2:
                raise Crash  # the third batch is committed on the target, its checkpoint is lost
            done.append(key)

        with pytest.raises(Crash):
            copy_range(src, tgt, spec, oid, lo=None, hi=None, position=None, batch_rows=150,
                       checkpoint=checkpoint_then_crash)
        position = done[-1]
        bounds = batch_bounds(src, spec, oid, position, None, 150)
        again = copy_batch(src, tgt, spec, oid, position, bounds[0])
        assert again.path == "upsert" and again.rows == 150
        copy_range(src, tgt, spec, oid, lo=None, hi=None, position=bounds[0], batch_rows=150,
                   checkpoint=lambda *_: None)
        assert range_checksum(tgt, spec, oid, None, None) == range_checksum(src, spec, oid, None, None)
    assert "notes" not in duplicate_keys(settings, "cell-2")


def test_target_rows_below_the_organizations_keys_keep_the_first_pass_direct(provisioned):
    """cell-1's IDs are below cell-2's: moving cell-2 -> cell-1, the target already holds lower keys.
    The probe looks only from the organization's first key on, so the first batch is not an upsert."""
    settings = provisioned.settings()
    seed_organizations(settings, "cell-1", orgs=1, rows=800, blobs=3, skew=False, seed=1)
    [org] = seed_organizations(settings, "cell-2", orgs=1, rows=800, blobs=3, skew=False, seed=2)
    oid = org.organization_id
    with _conn(settings, "cell-2") as src, _conn(settings, "cell-1") as tgt:
        order, specs = _specs(settings, src)
        for name in order:
            spec = specs[name]
            [upto] = batch_bounds(src, spec, oid, None, None, 10_000)
            if name == "notes":
                assert _target_has_rows(tgt, spec, None, upto)  # an open-below probe would take the upsert path
            result = copy_batch(src, tgt, spec, oid, None, upto, first=first_key(src, spec, oid, None, upto))
            assert result.path == "direct", name
    assert org_checksums(settings, "cell-1", oid) == org_checksums(settings, "cell-2", oid)


def test_both_sides_checksummed_at_once_match_one_at_a_time(seeded):
    settings, org = seeded
    oid = org.organization_id
    with _conn(settings, "cell-1") as src, _conn(settings, "cell-1") as other:
        order, specs = _specs(settings, src)
        for name in order:
            both = range_checksums(src, other, specs[name], oid, None, None)
            one = range_checksum(src, specs[name], oid, None, None)
            assert both == (one, one)
        with pytest.raises(psycopg.errors.UndefinedTable):  # an error on one side is raised, once
            range_checksums(src, other, dataclasses.replace(specs["notes"], name="no_such_table"), oid, None, None)


def test_without_the_first_key_the_first_batch_is_upserted_and_still_exact(provisioned, monkeypatch):
    """When the organization's first key is not found in time, the probe covers the whole span: the
    target's lower rows send the batch through staging + upsert, with the same result."""
    import migrator.copy.rows as rows

    settings = provisioned.settings()
    seed_organizations(settings, "cell-1", orgs=1, rows=600, blobs=3, skew=False, seed=3)
    [org] = seed_organizations(settings, "cell-2", orgs=1, rows=600, blobs=3, skew=False, seed=4)
    oid = org.organization_id
    monkeypatch.setattr(rows, "first_key", lambda *a, **k: None)
    paths = []
    real_copy_batch = rows.copy_batch

    def spy(*args, **kwargs):
        result = real_copy_batch(*args, **kwargs)
        paths.append((args[2].name, result.path))
        return result

    monkeypatch.setattr(rows, "copy_batch", spy)
    with _conn(settings, "cell-2") as src, _conn(settings, "cell-1") as tgt:
        order, specs = _specs(settings, src)
        for name in order:
            for r in plan_ranges(src, specs[name], oid, chunk_rows=10_000):
                copy_range(src, tgt, specs[name], oid, lo=r["lo"], hi=r["hi"], position=None, batch_rows=10_000,
                           checkpoint=lambda *_: None)
    assert ("notes", "upsert") in paths
    assert org_checksums(settings, "cell-1", oid) == org_checksums(settings, "cell-2", oid)
    assert not duplicate_keys(settings, "cell-1")
