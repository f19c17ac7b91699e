"""drain: wait until no transaction that began before the freeze is still open in the source.

Nothing can then commit behind the copy (docs/adr/0003-freeze-and-drain.md). A transaction still
open after ``moves.drain_timeout_s`` fails the move (the freeze is lifted) naming its session.
"""

from __future__ import annotations

import time

from migrator.cells.sessions import open_transactions_before
from migrator.errors import DrainTimeout
from migrator.moves.steps.base import Step


def run(ctx) -> None:
    move = ctx.store.get(ctx.move.id)
    since = move.source_frozen_clock
    if since is None:
        raise DrainTimeout(f"move {move.id}: no freeze time recorded", "resume the move so freeze runs again")
    src = ctx.source()
    timeout = ctx.settings.moves.drain_timeout_s
    deadline = time.monotonic() + timeout
    waited = 0.0
    while True:
        open_tx = open_transactions_before(src, since)
        if not open_tx:
            ctx.store.merge_json(move.id, ctx.token, "report", {"drain_waited_s": round(waited, 3)})
            return
        if time.monotonic() > deadline:
            shown = ", ".join(f"pid {t['pid']} ({t['application'] or '?'}, {t['state']}, since {t['xact_start']})"
                              for t in open_tx[:5])
            raise DrainTimeout(
                f"cell {move.source_cell!r}: {len(open_tx)} transaction(s) begun before the freeze still open "
                f"after {timeout:.0f}s: {shown}",
                "end or terminate those sessions (pg_terminate_backend), then `migrator resume`; "
                "see docs/runbooks/move-stuck.md",
            )
        ctx.heartbeat()
        time.sleep(0.2)
        waited += 0.2


STEP = Step("drain", run=run, summary="wait out every transaction begun before the freeze")
