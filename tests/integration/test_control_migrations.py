"""The control database's migrations carry moves in flight: revision 0003 moves control state out of
``moves.report`` into columns, and back on downgrade."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import psycopg
import pytest

from migrator.control.engine import alembic_config, upgrade_control_db

pytestmark = pytest.mark.integration


def test_0003_carries_control_state_of_moves_in_flight(scratch_db):
    from alembic import command

    upgrade_control_db(scratch_db, "0002")
    move_id = uuid.uuid4()
    frozen = dt.datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=dt.UTC)
    report = {"source_frozen_clock": frozen.isoformat(), "freeze_lifted": True, "tokens": ["t-old-1", "t-old-2"],
              "catch_up": {"applied": 4242, "rounds": 3, "keys_per_s": 1234.5}, "write_window_s": 1.5}
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("INSERT INTO moves (id, organization_id, source_cell, target_cell, strategy, state, step, token,"
                     " attempt, requested_by, reason, plan, report) VALUES (%s, 7, 'cell-1', 'cell-2', 'online',"
                     " 'failed', 'verify', 't-now', 3, 'test', 'in flight', '{}', %s)",
                     (move_id, json.dumps(report)))
    upgrade_control_db(scratch_db)
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        row = conn.execute("SELECT source_frozen_clock, freeze_lifted, previous_tokens, capture_snapshot,"
                           " catch_up_keys_per_s, report FROM moves WHERE id = %s", (move_id,)).fetchone()
    clock, lifted, tokens, snapshot, rate, human = row
    assert clock == frozen and lifted is True and tokens == ["t-old-1", "t-old-2"]
    assert snapshot is None and rate == 1234.5  # the catch-up starts over from the log's beginning
    assert human == {"catch_up": {"rounds": 3, "keys_per_s": 1234.5}, "write_window_s": 1.5}

    command.downgrade(alembic_config(scratch_db), "0002")
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        back = conn.execute("SELECT report FROM moves WHERE id = %s", (move_id,)).fetchone()[0]
    assert dt.datetime.fromisoformat(back["source_frozen_clock"]) == frozen
    assert back["freeze_lifted"] is True and back["tokens"] == ["t-old-1", "t-old-2"]
    assert back["catch_up"]["applied"] == 0 and back["write_window_s"] == 1.5


def test_0005_adds_move_throughput_and_takes_it_back(scratch_db):
    from alembic import command

    upgrade_control_db(scratch_db)
    move_id = uuid.uuid4()
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("INSERT INTO moves (id, organization_id, source_cell, target_cell, strategy, state, step, token,"
                     " attempt, requested_by, reason, plan, report) VALUES (%s, 7, 'cell-1', 'cell-2', 'frozen',"
                     " 'completed', 'verify_after_flip', 't', 1, 'test', 'measured', '{}', '{}')", (move_id,))
        conn.execute("INSERT INTO move_throughput (move_id, kind, table_name, strategy, source_cell, target_cell,"
                     " rows, bytes, copy_s, verify_s) VALUES (%s, 'rows', 'notes', 'frozen', 'cell-1', 'cell-2',"
                     " 1000, 90000, 0.01, 0.005)", (move_id,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO move_throughput (move_id, kind, table_name, strategy, source_cell, target_cell,"
                         " rows, copy_s) VALUES (%s, 'rows', 'notes', 'frozen', 'cell-1', 'cell-2', 1, 0)", (move_id,))
        conn.execute("DELETE FROM moves WHERE id = %s", (move_id,))  # its measurements go with it
        assert conn.execute("SELECT count(*) FROM move_throughput").fetchone()[0] == 0

    command.downgrade(alembic_config(scratch_db), "0004")
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('move_throughput')").fetchone()[0] is None
