"""What an error means for a move (recovery.classify) and the write window's figure (window.seconds)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import psycopg
import pytest
from celery.exceptions import SoftTimeLimitExceeded

from migrator.errors import CellUnavailable, ChecksumMismatch, InvalidMoveState, LeaseLost, StaleToken
from migrator.moves import window
from migrator.moves.recovery import Disposition, attempt_tokens, classify, failure


@pytest.mark.parametrize(("exc", "step", "current", "expected"), [
    (SoftTimeLimitExceeded(), "copy_rows", True, Disposition.CONTINUE),
    (InvalidMoveState("paused"), "verify", True, Disposition.STOP),
    (LeaseLost("another execution"), "copy_rows", True, Disposition.STOP),
    (StaleToken("superseded"), "flip", False, Disposition.STOP),
    (StaleToken("route re-fenced out of band"), "flip", True, Disposition.FAIL),
    (CellUnavailable("cell-2 down"), "copy_rows", True, Disposition.RETRY),
    (CellUnavailable("cell-2 down"), "preflight", True, Disposition.FAIL),  # rejected at once, source untouched
    (psycopg.OperationalError("server closed the connection"), "drain", True, Disposition.RETRY),
    (psycopg.errors.UniqueViolation("duplicate key"), "copy_rows", True, Disposition.RETRY),
    (psycopg.errors.UniqueViolation("duplicate key"), "preflight", True, Disposition.FAIL),
    (ChecksumMismatch("notes differ"), "verify", True, Disposition.FAIL),
    (ValueError("bug"), "verify", True, Disposition.FAIL),
])
def test_classify(exc, step, current, expected):
    assert classify(exc, step, attempt_is_current=lambda: current) is expected


def test_failure_message_and_code():
    assert failure(ChecksumMismatch("range differs", "see the runbook"), "verify") == \
        ("range differs (see the runbook)", "checksum_mismatch")
    assert failure(psycopg.OperationalError("gone"), "copy_rows/u1") == ("copy_rows/u1: gone", "cell_unavailable")
    assert failure(KeyError("x"), "flip")[1] == "internal_error"


def test_attempt_tokens_current_first_without_duplicates():
    move = SimpleNamespace(token="t3", previous_tokens=["t1", "t2", "t3"])
    assert attempt_tokens(move) == ["t3", "t1", "t2"]


def _move(frozen=None, unfrozen=None, flipped=None):
    return SimpleNamespace(frozen_at=frozen, unfrozen_at=unfrozen, flipped_at=flipped)


def test_write_window_closes_when_writable_again():
    t0 = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    sec = dt.timedelta(seconds=1)
    assert window.seconds(_move()) is None  # never frozen
    assert window.seconds(_move(frozen=t0), now=t0 + 5 * sec) == 5  # open: counts up
    assert window.closed_at(_move(frozen=t0)) is None
    # Flipped and the target unfrozen in the flip step: the later unfreeze step does not count.
    assert window.seconds(_move(frozen=t0, flipped=t0 + sec, unfrozen=t0 + 1.2 * sec), now=t0 + 80 * sec) == 1.2
    assert window.seconds(_move(frozen=t0, unfrozen=t0 + 3 * sec)) == 3  # aborted / failed: freeze lifted


def test_window_steps_of_each_strategy():
    assert window.steps_inside("online") == ("freeze", "drain", "final_delta", "verify_changes", "flip")
    assert window.steps_inside("frozen") == ("freeze", "drain", "copy_rows", "copy_blobs", "verify", "flip")
    assert not window.inside("online", "copy_rows") and window.inside("frozen", "copy_rows")
