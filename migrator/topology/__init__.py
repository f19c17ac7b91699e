"""The Topology Service: the authoritative map organization -> cell.

- :mod:`~migrator.topology.service`: the logic, in the control database (``TopologyService``).
- :mod:`~migrator.topology.server` / :mod:`~migrator.topology.client`: the same over gRPC
  (``migrator topology serve``; ``TopologyClient``). ``topology_client(settings)`` picks one.
- :mod:`~migrator.topology.notify`: route change notifications and a router cache.
"""

from migrator.topology.client import TopologyClient, topology_client
from migrator.topology.service import CellInfo, RouteConflict, RouteInfo, TopologyService

__all__ = ["CellInfo", "RouteConflict", "RouteInfo", "TopologyClient", "TopologyService", "topology_client"]
