"""freeze: make the organization read-only.

Two layers (docs/adr/0003-freeze-and-drain.md): the Topology Service marks the route frozen under
the move's token (the router answers writes with "read-only, retry"), and the freeze guard in the
cell databases refuses any write to the organization's rows with SQLSTATE MG001. The source's clock
at the freeze is recorded for ``drain``. Running it again changes nothing.
"""

from __future__ import annotations

from sqlalchemy import func

from migrator.cells.guard import freeze_org
from migrator.moves.steps.base import Step


def run(ctx) -> None:
    move = ctx.move
    route = ctx.topology.freeze(ctx.org, ctx.token, expected_cell=move.source_cell, actor=f"move {move.id}",
                                reason=move.reason or "move")
    for cell in (move.source_cell, move.target_cell):
        freeze_org(ctx.cell_conn(cell), ctx.org, ctx.token)
    frozen_clock = ctx.source().execute("SELECT clock_timestamp()").fetchone()[0]
    fields = {"route_version": route.version, "source_frozen_clock": frozen_clock}
    if move.frozen_at is None:
        fields["frozen_at"] = func.now()
    ctx.store.set_fields(move.id, ctx.token, **fields)


STEP = Step("freeze", run=run, summary="route frozen in the Topology Service, guard on in both cells")
