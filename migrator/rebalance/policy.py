"""Guardrails and the planner's view of the fleet, built from the readings cache and the move table.

- concurrency: active moves (any origin: operators' too) from or to a cell, and in the whole fleet,
  against ``rebalance.max_moves_per_cell`` (or the cell's ``max_concurrent_moves``) and
  ``rebalance.max_moves_total``;
- cooldown: an organization whose last move ended less than ``rebalance.cooldown_hours`` ago;
- pins: organizations an operator pinned (``migrator orgs pin``);
- moving: organizations with an active move;
- the global pause is a flag in the control database (``migrator rebalance pause|resume``).

The concurrency guardrails (``Guardrails``) live in :mod:`migrator.moves.admission`: they bound every
move, operators' too, and are checked again under a lock when a move is recorded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from migrator.config import Settings
from migrator.moves.calibration import try_load_calibration
from migrator.rebalance.planner import CellLoad, InFlight, OrgLoad, Thresholds
from migrator.rebalance.readings import estimate_window_s
from migrator.rebalance.store import RebalanceStore


def thresholds(settings: Settings, cell: str) -> Thresholds:
    t = settings.rebalance.thresholds(cell)
    return Thresholds(high_bytes=t.high_water_bytes, low_bytes=t.low_water_bytes, high_orgs=t.high_water_orgs,
                      low_orgs=t.low_water_orgs)


@dataclass
class FleetView:
    """Everything the planner needs, read once."""

    cells: list[CellLoad]
    orgs: dict[str, list[OrgLoad]]  # cell -> organizations routed there
    in_flight: list[InFlight]
    active_moves: list
    readings_at: dt.datetime | None
    now: dt.datetime
    org_bytes: dict[int, int]


def fleet_view(settings: Settings, store: RebalanceStore) -> FleetView:
    now = store.now()
    readings = {r.cell: r for r in store.cell_readings()}
    active = store.active_moves()
    moving = {m.organization_id: m for m in active}
    pins = store.pins()
    cooldown = dt.timedelta(hours=settings.rebalance.cooldown_hours)
    org_rows = store.org_readings()
    last_end = store.last_move_end({o.organization_id for o in org_rows if o.routed})
    calibration = try_load_calibration(settings)  # windows as recent moves measured them, when there are any

    cells = []
    for name in sorted(set(settings.cells) | set(readings)):
        r = readings.get(name)
        if r is None:
            continue
        note = ""
        if name not in settings.cells:
            note = "not in the config"
        elif r.state != "active":
            note = f"cell is {r.state}"
        elif r.error:
            note = f"last reading failed: {r.error}"
        cells.append(CellLoad(name, int(r.bytes), int(r.organizations), thresholds(settings, name),
                              accepts=not note, note=note))

    orgs: dict[str, list[OrgLoad]] = {}
    routed_at: dict[tuple[str, int], bool] = {}
    org_bytes: dict[int, int] = {}
    for o in org_rows:
        routed_at[(o.cell, o.organization_id)] = o.routed
        if not o.routed:
            continue
        org_bytes[o.organization_id] = int(o.bytes)
        pin = pins.get(o.organization_id)
        move = moving.get(o.organization_id)
        ended = last_end.get(o.organization_id)
        cooling = ended is not None and now - ended < cooldown
        note = ""
        if pin is not None:
            note = f"by {pin.pinned_by or 'an operator'}" + (f": {pin.reason}" if pin.reason else "")
        elif move is not None:
            note = f"move {move.id} is {move.state}"
        elif cooling:
            note = f"last move ended {(now - ended).total_seconds() / 3600:.1f} h ago, " \
                   f"cooldown {settings.rebalance.cooldown_hours:g} h"
        orgs.setdefault(o.cell, []).append(OrgLoad(
            organization_id=o.organization_id, cell=o.cell, bytes=int(o.bytes), rows=int(o.rows),
            window_s=estimate_window_s(settings, int(o.rows), int(o.blob_bytes), calibration), pinned=pin is not None,
            cooling=cooling, moving=move is not None, note=note))

    # Moves under way whose flip the readings have not seen yet move load between cells.
    in_flight = [InFlight(m.organization_id, m.source_cell, m.target_cell, org_bytes.get(m.organization_id, 0))
                 for m in active if routed_at.get((m.source_cell, m.organization_id))]
    measured = [r.measured_at for r in readings.values() if r.measured_at is not None]
    return FleetView(cells, orgs, in_flight, active, min(measured) if measured else None, now, org_bytes)
