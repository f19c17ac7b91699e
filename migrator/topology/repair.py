"""``migrator topology repair ORG``: clear a freeze that no live move owns (an admin's tool).

A freeze is a leftover when its token belongs to no live move: the move ended, was deleted, or the
token was never a move's (someone froze the route by hand, or an attacker did before the service was
locked down). Two layers may hold such a freeze, and both are cleared:

1. the route in the Topology Service (the ``Repair`` rpc, admin role, recorded in the route's history
   with the reason); refused while a live move owns the token (abort that move instead);
2. the freeze guard in the cell the organization is routed to. Guards in other cells are left alone:
   a source copy stays read-only until cleanup, so there are never two writable copies.
"""

from __future__ import annotations

import dataclasses

from migrator.cells.guard import is_frozen, unfreeze_org
from migrator.control.engine import control_engine
from migrator.db import connection, first_line
from migrator.topology.service import live_move_owning, token_digest


def repair_organization(settings, topology, organization_id: int, *, actor: str, reason: str) -> dict:
    result = topology.repair(organization_id, actor=actor, reason=reason)
    out = {"organization_id": organization_id, "route": dataclasses.asdict(result.route),
           "route_cleared": result.cleared, "cleared_token_digest": result.cleared_token_digest,
           "guard_cleared": False, "guard": None, "problems": []}
    cell = result.route.cell
    if cell not in settings.cells:
        out["problems"].append(f"cell {cell} is not in this config: its freeze guard was not checked")
        return out

    try:
        with connection(settings.cell(cell).dsn, what=f"cell {cell!r} database", autocommit=True) as conn:
            token = is_frozen(conn, organization_id)
            if token is None:
                out["guard"] = f"not frozen in {cell}"
                return out
            with control_engine(settings.control_dsn).connect() as control:
                owner = live_move_owning(control, organization_id, token)
            if owner is not None:
                out["guard"] = f"frozen in {cell} by move {owner[0]} ({owner[1]}): kept"
                out["problems"].append(f"the freeze guard in {cell} belongs to move {owner[0]}, which is {owner[1]}; "
                                       f"abort it (migrator abort {owner[0]})")
                return out
            unfreeze_org(conn, organization_id)
            out["guard_cleared"] = True
            out["guard"] = f"lifted in {cell} (token sha256:{token_digest(token)})"
    except Exception as exc:  # noqa: BLE001 - reported; the route part is done either way
        out["problems"].append(f"cell {cell}: {first_line(exc)}")
    return out
