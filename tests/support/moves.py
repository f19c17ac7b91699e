"""Helpers to drive and observe moves from tests."""

from __future__ import annotations

import subprocess
import time

from migrator.moves.store import MoveStore
from tests.support.processes import BIN, base_env


def migrator(fleet, *args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `migrator` CLI against the fleet's config."""
    e = base_env(fleet.config_path)
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
