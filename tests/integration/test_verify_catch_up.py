"""Online moves compare by key, before the freeze, what changed while the full verification ran: the
write window is left only the keys changed since (docs/adr/0012-the-write-window.md)."""

from __future__ import annotations

import psycopg
import pytest

from migrator.moves import workflow as wf
from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from tests.support.moves import run_in_process

pytestmark = pytest.mark.integration

NOTES_OF_ORG = ("SELECT t.id FROM notes t JOIN projects p ON p.id = t.project_id JOIN namespaces n ON n.id = "
                "p.namespace_id WHERE n.organization_id = %s ORDER BY t.id LIMIT %s")


def test_keys_changed_during_the_verification_are_compared_before_the_freeze(provisioned):
    base = provisioned.settings()
    # Few keys may be left to the window, so the 30 changed below need a round before the freeze.
    settings = base.model_copy(update={"online": base.online.model_copy(update={"max_delta_keys": 5})})
    [org] = [o.organization_id for o in seed_organizations(settings, "cell-1", orgs=1, rows=600, blobs=0,
                                                            skew=False, seed=23)]
    store = MoveStore(settings.control_dsn)
    move = store.create(organization_id=org, source="cell-1", target="cell-2", requested_by="test",
                        reason="verify catch-up", strategy="online")
    store.start(move.id, move.token)
    steps = wf.steps_for("online")
    run_in_process(settings, move, steps[: steps.index("verify") + 1])
    verified = store.get(move.id).verified_snapshot

    # The organization writes after the verification's snapshot (as it does while verify runs).
    with psycopg.connect(provisioned.cell_dsns["cell-1"], autocommit=True) as source:
        ids = [r[0] for r in source.execute(NOTES_OF_ORG, (org, 30))]
        source.execute("UPDATE notes SET note = note || ' (edited during verify)' WHERE id = ANY(%s)", (ids,))

    run_in_process(settings, move, ["verify_catch_up"])
    after = store.get(move.id)
    report = after.report["verify_catch_up"]
    assert [r["keys_compared"] for r in report["rounds"]] == [30], report
    assert report["keys_left_to_the_window"] == 0
    assert after.verified_snapshot != verified and after.capture_snapshot == after.verified_snapshot
    with psycopg.connect(provisioned.cell_dsns["cell-2"]) as target:  # the round applied them
        edited = target.execute("SELECT count(*) FROM notes WHERE id = ANY(%s) AND note LIKE %s",
                                (ids, "%(edited during verify)")).fetchone()[0]
        assert edited == 30

    # Inside the window only what changed since is compared; the move completes.
    run_in_process(settings, move, steps[steps.index("verify_catch_up") + 1:])
    done = store.get(move.id)
    assert done.state == wf.COMPLETED
    assert done.report["verification_in_window"]["changed_keys"] == 0
    assert done.verified_after_flip is True
