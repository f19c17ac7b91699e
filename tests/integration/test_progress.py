"""Progress counts work, not steps: a move held in copy_rows with most of its rows copied is well past the
fraction its step's place would give, with rows/s and an ETA; an abort shows what it removed, and after it
nothing is rendered as "0/N copied"."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from migrator.fleet.processes import BIN
from migrator.fleet.services import child_env
from migrator.moves import workflow as wf
from migrator.moves.operations import Operations
from migrator.moves.store import MoveStore
from migrator.moves.views import weighted_fraction
from migrator.sample.seed import seed_organizations
from tests.support.checks import org_checksums
from tests.support.moves import HeldTable, copied_rows, migrator, wait_copying, wait_move

pytestmark = pytest.mark.integration


def _seed(fleet, seed):
    settings = fleet.settings()
    [org] = seed_organizations(settings, "cell-1", orgs=1, rows=8_000, blobs=2, skew=False, seed=seed)
    return settings, org.organization_id


def _status(fleet, move_id) -> dict:
    result = migrator(fleet, "status", str(move_id), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_progress_weighs_rows_and_reports_rate_and_eta(provisioned, worker):
    settings, org = _seed(provisioned, seed=201)
    store = MoveStore(settings.control_dsn)
    # The target's labels (a small table) are held: every other table's ranges get copied, labels' cannot.
    with HeldTable(provisioned.cell_dsns["cell-2"], "labels"):
        move = Operations(settings).request_move(org, "cell-2", actor="test", reason="progress", strategy="online")

        def others_copied(m, s) -> bool:
            if m.state not in ("queued", "running"):
                raise AssertionError(f"move ended {m.state} at {m.step}: {m.error}")
            units = s.units(m.id, "copy_rows")
            return (m.step == "copy_rows" and any(u.table_name == "labels" for u in units)
                    and all(u.state == "done" for u in units if u.table_name != "labels"))

        wait_move(settings, move.id, predicate=others_copied, timeout=120)
        detail = _status(provisioned, move.id)
        p = detail["progress"]
        assert detail["step"] == "copy_rows" and 0 < p["rows_copied"] < p["rows_total"]
        share = p["rows_copied"] / p["rows_total"]
        assert share > 0.9  # labels are a few per cent of the rows
        steps = wf.steps_for("online")
        by_steps = (steps.index("copy_rows") + share) / len(steps)  # what the bar used to say
        assert p["fraction"] > by_steps + 0.1, (p["fraction"], by_steps)
        assert p["fraction"] == pytest.approx(weighted_fraction(steps, detail["plan"], "copy_rows", share)[0],
                                              abs=1e-3)
        assert p["rows_per_s"] > 0 and p["eta_s"] > 0
        # The text shows them too.
        text = migrator(provisioned, "status", str(move.id))
        assert f"progress {p['fraction'] * 100:.0f}%" in text.stdout and "rows/s, ETA" in text.stdout, text.stdout
    # `migrator watch` follows it to the end: the move's bar with the copy's rate, at 80 columns.
    watched = migrator(provisioned, "watch", str(move.id), timeout=180)
    assert watched.returncode == 0, watched.stderr + watched.stdout
    assert re.search(r"step verify_after_flip \(completed\)\s.*100%", watched.stderr), watched.stderr
    assert re.search(r"^\s+[\d,]+ rows/s\s*$", watched.stderr, re.M), watched.stderr
    assert all(len(line) <= 80 for line in watched.stderr.splitlines()), watched.stderr
    final = wait_move(settings, move.id, timeout=10)
    assert final.state == "completed", final.error
    p = _status(provisioned, move.id)["progress"]
    assert p["fraction"] == 1.0 and p["eta_s"] == 0.0
    assert p["rows_per_s"] > 0  # the copy's measured rate, kept in the report
    assert copied_rows(store, move.id) >= p["rows_total"]
    # cleanup shows what it deletes from the source: every row of the organization (no one wrote meanwhile).
    cleaned = migrator(provisioned, "cleanup", str(move.id), "--force", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    detail = json.loads(cleaned.stdout)
    removal = detail["progress"]["removal"]
    assert detail["state"] == "cleaned" and removal["what"] == "cleanup" and removal["done"]
    assert removal["cell"] == "cell-1" and removal["rows"] == p["rows_total"]
    assert removal["tables"] == {t: n for t, n in detail["plan"]["tables"].items()}
    text = migrator(provisioned, "status", str(move.id))
    assert f"cleaned up: removed {p['rows_total']:,} rows from cell-1" in text.stdout, text.stdout


def test_abort_shows_what_it_removed_and_status_no_zero_of_n(provisioned, worker):
    settings, org = _seed(provisioned, seed=202)
    store = MoveStore(settings.control_dsn)
    with HeldTable(provisioned.cell_dsns["cell-2"], "notes") as held:
        move = Operations(settings).request_move(org, "cell-2", actor="test", reason="abort with progress")
        wait_copying(settings, move.id)
        # The abort's deletion waits for the held table: the CLI is showing progress when the hold ends.
        abort = subprocess.Popen([str(BIN / "migrator"), "abort", str(move.id), "--reason", "test"],
                                 env=child_env(provisioned.config_path), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_move(settings, move.id, predicate=lambda m, s: m.state == "aborting", timeout=60)
        held.release()
        out, err = abort.communicate(timeout=120)
    assert abort.returncode == 0, err + out
    assert all(rows == 0 for rows, _ in org_checksums(settings, "cell-2", org).values())
    detail = _status(provisioned, move.id)
    removal = detail["progress"]["removal"]
    assert detail["state"] == "aborted" and removal["what"] == "abort" and removal["done"]
    assert removal["cell"] == "cell-2" and removal["rows"] > 0
    assert removal["rows"] == sum(removal["tables"].values())
    assert detail["report"]["abort"]["rows_deleted"] == removal["tables"]
    assert f"aborted: removed {removal['rows']:,} rows from cell-2" in out, out
    # After the abort nothing says "0/N": not status, not watch.
    text = migrator(provisioned, "status", str(move.id))
    assert text.returncode == 0, text.stderr
    assert f"aborted: removed {removal['rows']:,} rows from cell-2" in text.stdout, text.stdout
    assert not re.search(r"\b0/\d", text.stdout), text.stdout
    watched = migrator(provisioned, "watch", str(move.id))
    assert watched.returncode == 1  # the move did not complete
    assert not re.search(r"\b0/\d", watched.stderr + watched.stdout), watched.stderr
    assert "aborted: removed" in watched.stderr + watched.stdout
    assert store.get(move.id).state == "aborted"
