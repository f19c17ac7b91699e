"""The Topology Service over gRPC (``migrator topology serve``).

A refused call (any :class:`~migrator.errors.MigratorError`) ends with a gRPC status chosen by its
class and trailing metadata ``migrator-error-bin`` = JSON ``{"code", "message", "hint"}``, from which
:class:`~migrator.topology.client.TopologyClient` re-raises the same exception class.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
from concurrent import futures

import grpc

from migrator.control.engine import upgrade_control_db
from migrator.dsn import mask_dsn, redact
from migrator.errors import (
    CellUnavailable,
    InvalidMoveState,
    MigratorError,
    RouteFrozen,
    SameCell,
    StaleToken,
    StaleVersion,
    UnknownCell,
    UnknownOrganization,
)
from migrator.topology.proto import topology_pb2 as pb
from migrator.topology.proto import topology_pb2_grpc as pb_grpc
from migrator.topology.service import CellInfo, RouteConflict, RouteInfo, TopologyService

log = logging.getLogger(__name__)

ERROR_METADATA_KEY = "migrator-error-bin"
STOP_GRACE_S = 5.0

# First match wins (subclasses before their bases).
STATUS_BY_ERROR: tuple[tuple[type[MigratorError], grpc.StatusCode], ...] = (
    (UnknownOrganization, grpc.StatusCode.NOT_FOUND),
    (UnknownCell, grpc.StatusCode.NOT_FOUND),
    (StaleVersion, grpc.StatusCode.ABORTED),
    (StaleToken, grpc.StatusCode.ABORTED),
    (RouteFrozen, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidMoveState, grpc.StatusCode.FAILED_PRECONDITION),
    (RouteConflict, grpc.StatusCode.FAILED_PRECONDITION),
    (SameCell, grpc.StatusCode.INVALID_ARGUMENT),
    (CellUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: MigratorError) -> grpc.StatusCode:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return grpc.StatusCode.FAILED_PRECONDITION


def cell_msg(cell: CellInfo) -> pb.Cell:
    return pb.Cell(name=cell.name, address=cell.address, state=cell.state, seq_min=cell.seq_min,
                   seq_max=cell.seq_max)


def route_msg(route: RouteInfo) -> pb.Route:
    return pb.Route(organization_id=route.organization_id, cell=route.cell, version=route.version,
                    state=route.state, move_token=route.move_token)


def history_msg(entry: dict) -> pb.HistoryEntry:
    return pb.HistoryEntry(**{k: entry[k] for k in pb.HistoryEntry.DESCRIPTOR.fields_by_name if k in entry})


def _rpc(method):
    """Run one call; a MigratorError becomes a status plus the error's code, message and hint."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except MigratorError as exc:
            message, hint = redact(exc.message), redact(exc.hint) if exc.hint else None
            log.info("%s refused: %s: %s", method.__name__, exc.code, message)
            payload = json.dumps({"code": exc.code, "message": message, "hint": hint}).encode()
            context.set_trailing_metadata(((ERROR_METADATA_KEY, payload),))
            context.abort(status_for(exc), message)
        except Exception as exc:  # noqa: BLE001 - the caller must get an answer, the log the traceback
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, redact(f"topology service error: {type(exc).__name__}: {exc}"))

    return wrapper


class TopologyServicer(pb_grpc.TopologyServicer):
    """gRPC face of a :class:`TopologyService`: one method per rpc, no logic of its own."""

    def __init__(self, service: TopologyService):
        self.service = service

    @_rpc
    def RegisterCell(self, request, context):  # noqa: N802 - names come from the proto
        return cell_msg(self.service.register_cell(request.name, request.address, request.state or "active"))

    @_rpc
    def GetCell(self, request, context):  # noqa: N802
        return cell_msg(self.service.get_cell(request.name))

    @_rpc
    def ListCells(self, request, context):  # noqa: N802
        return pb.ListCellsResponse(cells=[cell_msg(c) for c in self.service.list_cells()])

    @_rpc
    def SetCellState(self, request, context):  # noqa: N802
        return cell_msg(self.service.set_cell_state(request.name, request.state))

    @_rpc
    def RegisterRoute(self, request, context):  # noqa: N802
        return route_msg(self.service.register_route(request.organization_id, request.cell, actor=request.actor,
                                                     reason=request.reason))

    @_rpc
    def Classify(self, request, context):  # noqa: N802
        return route_msg(self.service.classify(request.organization_id))

    @_rpc
    def ListRoutes(self, request, context):  # noqa: N802
        cell = request.cell if request.HasField("cell") else None
        return pb.ListRoutesResponse(routes=[route_msg(r) for r in self.service.list_routes(cell)])

    @_rpc
    def Freeze(self, request, context):  # noqa: N802
        return route_msg(self.service.freeze(request.organization_id, request.token,
                                             expected_cell=request.expected_cell, actor=request.actor,
                                             reason=request.reason))

    @_rpc
    def Refence(self, request, context):  # noqa: N802
        return route_msg(self.service.refence(request.organization_id, request.old_token, request.new_token,
                                              actor=request.actor, reason=request.reason))

    @_rpc
    def Flip(self, request, context):  # noqa: N802
        return route_msg(self.service.flip(request.organization_id, request.from_cell, request.to_cell,
                                           expected_version=request.expected_version, token=request.token,
                                           actor=request.actor, reason=request.reason))

    @_rpc
    def Unfreeze(self, request, context):  # noqa: N802
        return route_msg(self.service.unfreeze(request.organization_id, request.token, actor=request.actor,
                                               reason=request.reason))

    @_rpc
    def History(self, request, context):  # noqa: N802
        return pb.HistoryResponse(entries=[history_msg(e) for e in self.service.history(request.organization_id)])


def build_server(service: TopologyService, listen: str, *, max_workers: int = 16) -> grpc.Server:
    """A gRPC server for ``service`` bound to ``listen`` (HOST:PORT), not yet started."""
    # so_reuseport off: a second server on the same port must fail, not silently share it.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="topology"),
                         options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_TopologyServicer_to_server(TopologyServicer(service), server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise MigratorError(f"the Topology Service cannot listen on {listen}: {exc}",
                            "is another `migrator topology serve` running there? choose another --listen") from None
    if not port:
        raise MigratorError(f"the Topology Service cannot listen on {listen}",
                            "check HOST:PORT, or whether another process holds the port")
    return server


def serve(settings, listen: str | None = None) -> None:
    """Upgrade the control database, then serve until SIGTERM or SIGINT (in-flight calls finish)."""
    listen = listen or settings.topology.listen
    log.info("control database %s: upgrading schema", mask_dsn(settings.control_dsn))
    upgrade_control_db(settings.control_dsn)
    service = TopologyService(settings.control_dsn, notify_channel=settings.topology.notify_channel,
                              sequence_block=settings.topology.sequence_block)
    server = build_server(service, listen)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    server.start()
    log.info("topology service listening on %s (control database %s, notify channel %s)", listen,
             mask_dsn(settings.control_dsn), settings.topology.notify_channel)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop(STOP_GRACE_S).wait()
        log.info("topology service stopped")
