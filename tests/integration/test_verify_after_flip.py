"""After the flip the retained source copy is verified against the target in full, leaving out the keys
the target changed since (logged by a capture the flip starts); a difference blocks cleanup."""

from __future__ import annotations

import psycopg
import pytest

from migrator.errors import MigratorError
from migrator.moves import workflow as wf
from migrator.moves.operations import check_cleanup_allowed
from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from tests.support.moves import run_in_process

pytestmark = pytest.mark.integration

NOTE_OF_ORG = ("SELECT t.id FROM notes t JOIN projects p ON p.id = t.project_id JOIN namespaces n ON n.id = "
               "p.namespace_id WHERE n.organization_id = %s ORDER BY t.id LIMIT 1")


def _moved_until_unfreeze(settings, org: int):
    store = MoveStore(settings.control_dsn)
    move = store.create(organization_id=org, source="cell-1", target="cell-2", requested_by="test",
                        reason="verify after flip", strategy="frozen")
    store.start(move.id, move.token)
    steps = wf.steps_for("frozen")
    run_in_process(settings, move, steps[: steps.index("verify_after_flip")])
    return store, move


def test_a_source_copy_changed_behind_the_guard_is_found_and_blocks_cleanup(provisioned):
    settings = provisioned.settings()
    orgs = [o.organization_id for o in seed_organizations(settings, "cell-1", orgs=2, rows=400, blobs=0,
                                                          skew=False, seed=21)]
    writes_on_target, tampered = orgs
    results = {}
    for org in orgs:
        store, move = _moved_until_unfreeze(settings, org)
        with psycopg.connect(provisioned.cell_dsns["cell-2"], autocommit=True) as target, \
                psycopg.connect(provisioned.cell_dsns["cell-1"], autocommit=True) as source:
            if org == writes_on_target:  # the organization's own write on its new cell: logged, left out
                target.execute("UPDATE notes SET note = 'written on the target' WHERE id = %s",
                               target.execute(NOTE_OF_ORG, (org,)).fetchone())
            else:  # someone changes the frozen source copy behind the guard's back
                source.execute("SET session_replication_role = replica")
                source.execute("UPDATE notes SET note = 'tampered' WHERE id = %s",
                               source.execute(NOTE_OF_ORG, (org,)).fetchone())
        run_in_process(settings, move, ["verify_after_flip"])
        results[org] = store.get(move.id)
    ok, bad = results[writes_on_target], results[tampered]
    assert ok.state == bad.state == "completed"
    assert ok.verified_after_flip is True and ok.report["verification_after_flip"]["differing"] == []
    assert bad.verified_after_flip is False
    assert [r for r in bad.report["verification_after_flip"]["differing"] if r.startswith("notes ")], bad.report
    events = [e.event for e in MoveStore(settings.control_dsn).events(bad.id)]
    assert "mismatch" in events
    now = MoveStore(settings.control_dsn).now()
    check_cleanup_allowed(settings, ok, force=True, now=now)
    with pytest.raises(MigratorError, match="differing") as refused:
        check_cleanup_allowed(settings, bad, force=True, now=now)
    assert "--accept-differences" in refused.value.hint
    check_cleanup_allowed(settings, bad, force=True, now=now, accept_differences="checked by hand: stale source")
    with psycopg.connect(provisioned.cell_dsns["cell-2"], autocommit=True) as target:  # the target capture ended
        assert target.execute("SELECT count(*) FROM migrator.captures").fetchone()[0] == 0
