"""The Topology Service: the authoritative map organization -> cell.

- :mod:`~migrator.topology.service`: the logic, in the control database (``TopologyService``).
- :mod:`~migrator.topology.server` / :mod:`~migrator.topology.client`: the same over gRPC
  (``migrator topology serve``; ``TopologyClient``). ``topology_client(settings)`` picks one.
- :mod:`~migrator.topology.routes`: the data answers carry (``RouteInfo``, ``CellInfo``), cheap to import.
- :mod:`~migrator.topology.watch`: the route change stream (``WatchRoutes``), served from LISTEN/NOTIFY.
- :mod:`~migrator.topology.follow` / :mod:`~migrator.topology.lookup`: a follower of that stream, and the
  applications' route lookup with a local cache kept current by it.
- :mod:`~migrator.topology.notify`: route change notifications (LISTEN/NOTIFY) in the control database.

Names are imported on first use, so ``import migrator.topology.client`` stays light (no SQLAlchemy).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CellInfo": "migrator.topology.routes",
    "RouteInfo": "migrator.topology.routes",
    "RouteConflict": "migrator.topology.service",
    "TopologyService": "migrator.topology.service",
    "TopologyClient": "migrator.topology.client",
    "topology_client": "migrator.topology.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'migrator.topology' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
