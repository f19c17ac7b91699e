"""capture (online strategy): start logging the organization's changes in the source.

Then wait until every transaction that began before the capture has ended, so no change can commit
unlogged behind the bulk copy. Nothing is frozen: the organization stays writable.
"""

from __future__ import annotations

import time

from migrator.cells import capture as cap
from migrator.cells.sessions import open_transactions_before
from migrator.errors import MigratorError
from migrator.moves.change_log import capture_id
from migrator.moves.steps.base import Step


def run(ctx) -> None:
    src = ctx.source()
    if not src.execute("SELECT to_regclass('migrator.captures') IS NOT NULL").fetchone()[0]:
        raise MigratorError(f"cell {ctx.move.source_cell!r} has no change capture installed",
                            "run `migrator cells init` (it installs the capture triggers), then resume")
    cap.start_capture(src, ctx.org, capture_id(ctx.move), str(ctx.move.id))
    since = src.execute("SELECT clock_timestamp()").fetchone()[0]
    deadline = time.monotonic() + ctx.settings.moves.drain_timeout_s
    while open_transactions_before(src, since):
        if time.monotonic() > deadline:
            # Not a failure of the organization's availability: nothing is frozen yet. Try again later.
            raise MigratorError(
                f"cell {ctx.move.source_cell!r}: transactions begun before the capture are still open after "
                f"{ctx.settings.moves.drain_timeout_s:.0f}s", "see docs/runbooks/move-stuck.md; then resume")
        ctx.heartbeat()
        time.sleep(0.2)
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {"capture_started": since.isoformat()})


STEP = Step("capture", run=run, summary="log the organization's changes from now on (online)")
