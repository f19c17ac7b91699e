"""The Topology Service's wire format: protobuf messages <-> :mod:`~migrator.topology.routes` data.

Shared by the server and the client; imports neither the service nor SQLAlchemy.
"""

from __future__ import annotations

from migrator.topology.proto import topology_pb2 as pb
from migrator.topology.routes import CellInfo, RouteInfo

# Trailing metadata of a refused call: JSON {"code", "message", "hint"} of the MigratorError.
ERROR_METADATA_KEY = "migrator-error-bin"


def cell_msg(cell: CellInfo) -> pb.Cell:
    return pb.Cell(name=cell.name, address=cell.address, state=cell.state, seq_min=cell.seq_min,
                   seq_max=cell.seq_max)


def route_msg(route: RouteInfo) -> pb.Route:
    return pb.Route(organization_id=route.organization_id, cell=route.cell, version=route.version,
                    state=route.state, token_digest=route.token_digest, revision=route.revision)


def history_msg(entry: dict) -> pb.HistoryEntry:
    return pb.HistoryEntry(**{k: entry[k] for k in pb.HistoryEntry.DESCRIPTOR.fields_by_name if k in entry})


def route_of(msg: pb.Route) -> RouteInfo:
    digest = msg.token_digest if msg.HasField("token_digest") else None
    return RouteInfo(msg.organization_id, msg.cell, msg.version, msg.state, digest, msg.revision)


def cell_of(msg: pb.Cell) -> CellInfo:
    return CellInfo(msg.name, msg.address, msg.state, msg.seq_min, msg.seq_max)


def history_of(msg: pb.HistoryEntry) -> dict:
    optional = ("from_cell", "to_cell", "token_digest")
    return {name: (getattr(msg, name) if name not in optional or msg.HasField(name) else None)
            for name in pb.HistoryEntry.DESCRIPTOR.fields_by_name}
