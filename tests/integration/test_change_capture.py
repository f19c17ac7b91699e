"""The change log's positions are snapshots: an entry is applied once its writer's transaction is visible,
whatever its id (ids are assigned at insert time, so a transaction that inserted early and committed late
has a lower id than entries a round already applied)."""

from __future__ import annotations

import psycopg
import pytest

from migrator.cells import capture as cap
from migrator.sample.seed import seed_organizations

pytestmark = pytest.mark.integration


def test_an_entry_that_commits_after_a_round_is_applied_by_the_next(provisioned):
    settings = provisioned.settings()
    [org] = seed_organizations(settings, "cell-1", orgs=1, rows=300, blobs=0, skew=False, seed=3)
    dsn = provisioned.cell_dsns["cell-1"]
    notes_of_org = ("SELECT t.id FROM notes t JOIN projects p ON p.id = t.project_id JOIN namespaces n "
                    "ON n.id = p.namespace_id WHERE n.organization_id = %s ORDER BY t.id LIMIT 2")
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn) as late:
        first, second = (r[0] for r in conn.execute(notes_of_org, (org.organization_id,)))
        cap.start_capture(conn, org.organization_id, "cap-test", "move-test")
        # A transaction logs a change (its entry gets the lower id) but has not committed yet ...
        late.execute("UPDATE notes SET note = 'late' WHERE id = %s", (first,))
        # ... while another one logs and commits a change (a higher id).
        conn.execute("UPDATE notes SET note = 'early' WHERE id = %s", (second,))
        round_one = cap.snapshot(conn)
        # The first round sees only the committed change.
        assert cap.pending_keys(conn, "cap-test", None, round_one) == 1
        late.commit()
        ids = dict(conn.execute("SELECT pk->>0, id FROM migrator.change_log WHERE capture_id = 'cap-test'").fetchall())
        # Its entry has the lower id: a position kept as "the highest id applied" would skip it for ever.
        assert int(ids[str(first)]) < int(ids[str(second)])
        assert cap.pending_keys(conn, "cap-test", round_one) == 1, "the late commit must be pending after round one"
        round_two = cap.snapshot(conn)
        assert cap.pending_keys(conn, "cap-test", round_two) == 0
        cap.stop_capture(conn, "cap-test")
