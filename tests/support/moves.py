"""Helpers to drive and observe moves from tests."""

from __future__ import annotations

import subprocess
import time

from migrator.cells.names import qualified
from migrator.fleet.processes import BIN
from migrator.fleet.services import child_env
from migrator.moves.store import MoveStore


def migrator(fleet, *args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `migrator` CLI against the fleet's config."""
    e = child_env(fleet.config_path)
    e.update(env or {})
    return subprocess.run([str(BIN / "migrator"), *args], env=e, capture_output=True, text=True, timeout=timeout)


def wait_move(settings, move_id, states=("completed", "failed", "rejected", "aborted", "cleaned"),
              timeout: float = 180, predicate=None):
    store = MoveStore(settings.control_dsn)
    deadline = time.monotonic() + timeout
    move = None
    while time.monotonic() < deadline:
        move = store.get(move_id)
        if predicate is not None:
            if predicate(move, store):
                return move
        elif move.state in states:
            return move
        time.sleep(0.2)
    raise TimeoutError(f"move {move_id} still {move.state if move else '?'} at step "
                       f"{move.step if move else '?'} after {timeout}s: {move.error if move else ''}")


def copied_rows(store: MoveStore, move_id) -> int:
    return sum(u.done for u in store.units(move_id, "copy_rows"))


class HeldTable:
    """Holds ``LOCK TABLE … IN SHARE MODE`` on one table of a cell until released.

    SHARE conflicts with every write (INSERT, COPY FROM, UPDATE, DELETE) but not with reads. Held on a
    table of the *target* cell that the organization has rows in, it keeps ``copy_rows`` from ever
    finishing, so a move cannot reach its flip while a test kills, pauses or aborts it: the moment the
    test acts is one it controls, not one it races a worker for. ``release()`` is safe to call after
    the server went away (a test that stops the cell's server ends the hold that way).
    """

    def __init__(self, dsn: str, table: str):
        import psycopg
        from psycopg import sql

        self.table = table
        self.conn = psycopg.connect(dsn, application_name="test-hold")
        self.conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(qualified(table)))

    def release(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.rollback()
            self.conn.close()
        except Exception:  # noqa: BLE001 - the server may have been stopped on purpose
            pass
        self.conn = None

    def __enter__(self) -> HeldTable:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def wait_copying(settings, move_id, timeout: float = 120):
    """Wait until ``copy_rows`` has checkpointed rows; the move must still be running (see HeldTable)."""

    def copying(move, store) -> bool:
        if move.state not in ("queued", "running"):
            raise AssertionError(f"move {move_id} ended ({move.state} at {move.step}: {move.error}) while the test "
                                 f"held its copy")
        return move.step == "copy_rows" and copied_rows(store, move.id) > 0

    return wait_move(settings, move_id, timeout=timeout, predicate=copying)


def run_in_process(settings, move, steps_to_run) -> None:
    """Run steps of a move in this process, one after the other, as the worker would (claim, work or
    plan/units/fan-in, advance): for tests that act between two steps without racing a worker."""
    from migrator.moves import steps
    from migrator.moves.context import MoveContext

    store = MoveStore(settings.control_dsn)
    for step in steps_to_run:
        current = store.claim_step(move.id, step, move.token, "test", 60)
        assert current is not None, f"step {step} not claimable"
        ctx = MoveContext(settings=settings, store=store, move=current, token=move.token, owner="test")
        work = steps.get(step)
        try:
            if work.fans_out:
                store.ensure_units(move.id, move.token, step, work.plan(ctx))
                for unit in store.units(move.id, step):
                    assert store.claim_unit(move.id, step, unit.unit, move.token, "test", 60)
                    assert store.finish_unit(move.id, step, unit.unit, move.token, "test", work.unit(ctx, unit) or {})
                work.fan_in(ctx)
            else:
                work.run(ctx)
        finally:
            ctx.close()
        assert store.advance(move.id, move.token, step) is not None, f"step {step} did not advance"
