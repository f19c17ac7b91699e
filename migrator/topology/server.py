"""The Topology Service over gRPC (``migrator topology serve``).

With ``topology.tls`` every caller shows a client certificate signed by the fleet's CA (mutual TLS);
its OU is the caller's role and each rpc needs one (``RPC_ROLES``): a reader classifies and lists, a
mover also freezes, re-fences, flips and unfreezes, an admin also registers cells and routes, sets
cell states and repairs. A refused caller gets PERMISSION_DENIED and the server logs who it was.
Without TLS (loopback or a unix socket only, or ``topology.insecure``) every caller may do anything.
The history of a change records who asked and, under TLS, the certificate that made the call.

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
    PermissionDenied,
    RouteFrozen,
    SameCell,
    StaleToken,
    StaleVersion,
    Unauthenticated,
    UnknownCell,
    UnknownOrganization,
)
from migrator.topology.certs import CertificateError, Identity, describe, identity_of_pem
from migrator.topology.messages import ERROR_METADATA_KEY, cell_msg, history_msg, route_msg
from migrator.topology.proto import topology_pb2 as pb
from migrator.topology.proto import topology_pb2_grpc as pb_grpc
from migrator.topology.service import RouteConflict, TopologyService
from migrator.topology.tls import check_listen, server_credentials
from migrator.topology.watch import Change, Heartbeat, RouteWatchHub, Snapshot

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0

# First match wins (subclasses before their bases).
STATUS_BY_ERROR: tuple[tuple[type[MigratorError], grpc.StatusCode], ...] = (
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
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


READER, MOVER, ADMIN = "reader", "mover", "admin"
# The role each rpc needs (a higher role may do what a lower one may).
RPC_ROLES: dict[str, str] = {
    "GetCell": READER, "ListCells": READER, "Classify": READER, "ListRoutes": READER, "History": READER,
    "WatchRoutes": READER,
    "Freeze": MOVER, "Refence": MOVER, "Flip": MOVER, "Unfreeze": MOVER,
    "RegisterCell": ADMIN, "SetCellState": ADMIN, "RegisterRoute": ADMIN, "Repair": ADMIN,
}
# Without TLS nobody can be told apart: every caller that reaches a local-only server is trusted.
UNAUTHENTICATED_CALLER = Identity("unauthenticated", ADMIN)


def _refuse(context, name: str, exc: Exception):
    """End a call with the status of ``exc`` (a MigratorError: its code, message and hint in the trailers)."""
    if isinstance(exc, MigratorError):
        message, hint = redact(exc.message), redact(exc.hint) if exc.hint else None
        log.info("%s refused: %s: %s", name, exc.code, message)
        payload = json.dumps({"code": exc.code, "message": message, "hint": hint}).encode()
        context.set_trailing_metadata(((ERROR_METADATA_KEY, payload),))
        context.abort(status_for(exc), message)
    log.error("%s failed", name, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, redact(f"topology service error: {type(exc).__name__}: {exc}"))


def _rpc(method):
    """Run one call: authorize the caller for the rpc's role, then the service; a MigratorError
    becomes a status plus the error's code, message and hint."""
    name = method.__name__
    role = RPC_ROLES[name]

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            caller = self.authorize(context, name, role)
            return method(self, request, caller)
        except Exception as exc:  # noqa: BLE001 - the caller must get an answer, the log the traceback
            _refuse(context, name, exc)

    return wrapper


SNAPSHOT_CHUNK = 1000  # routes per SNAPSHOT message (about 50 kB)


def event_messages(event, chunk: int = SNAPSHOT_CHUNK):
    """The RouteEvent messages of one :mod:`~migrator.topology.watch` event."""

    if isinstance(event, Snapshot):
        for i in range(0, len(event.routes), chunk):
            yield pb.RouteEvent(kind=pb.RouteEvent.SNAPSHOT, routes=[route_msg(r) for r in event.routes[i:i + chunk]])
        yield pb.RouteEvent(kind=pb.RouteEvent.SYNCED, head=event.head, heartbeat_ms=round(event.heartbeat_s * 1000))
    elif isinstance(event, Change):
        yield pb.RouteEvent(kind=pb.RouteEvent.CHANGE, routes=[route_msg(event.route)], action=event.action)
    elif isinstance(event, Heartbeat):
        yield pb.RouteEvent(kind=pb.RouteEvent.HEARTBEAT, head=event.head)


class TopologyServicer(pb_grpc.TopologyServicer):
    """gRPC face of a :class:`TopologyService`: authorization, then one service method per rpc."""

    def __init__(self, service: TopologyService, *, tls: bool = False, hub=None):

        self.service = service
        self.tls = tls
        self.hub = hub if hub is not None else RouteWatchHub(service, heartbeat_s=service.watch_heartbeat_s)

    def authorize(self, context, rpc: str, role: str) -> Identity:
        """The caller, if its certificate's role may call ``rpc``; PermissionDenied otherwise."""
        if not self.tls:
            return UNAUTHENTICATED_CALLER
        pem = (context.auth_context().get("x509_pem_cert") or [None])[0]
        if pem is None:  # cannot happen while the server requires client certificates
            raise Unauthenticated(f"{rpc} refused: the caller showed no client certificate",
                                  "configure topology.tls.client_cert and client_key")
        caller = identity_of_pem(bytes(pem))
        if not caller.may(role):
            log.warning("refused %s from %s (certificate CN=%s, role %s): it needs the %s role", rpc,
                        context.peer(), caller.name, caller.role or "none", role)
            raise PermissionDenied(
                f"{rpc} needs the {role} role; the caller's certificate (CN={caller.name}) has "
                f"{'the ' + caller.role + ' role' if caller.role else 'no role'}",
                f"give this process a client certificate of the {role} role "
                f"(migrator topology certs issue DIR NAME --role {role}) in topology.tls.client_cert")
        return caller

    def actor(self, requested: str, caller: Identity) -> str:
        """Who the history names: who asked, and under TLS the certificate that made the call."""
        if not self.tls:
            return requested
        tag = f"[{caller.name}/{caller.role}]"
        return f"{requested} {tag}" if requested else tag

    @_rpc
    def RegisterCell(self, request, caller):  # noqa: N802 - names come from the proto
        return cell_msg(self.service.register_cell(request.name, request.address, request.state or "active"))

    @_rpc
    def GetCell(self, request, caller):  # noqa: N802
        return cell_msg(self.service.get_cell(request.name))

    @_rpc
    def ListCells(self, request, caller):  # noqa: N802
        return pb.ListCellsResponse(cells=[cell_msg(c) for c in self.service.list_cells()])

    @_rpc
    def SetCellState(self, request, caller):  # noqa: N802
        return cell_msg(self.service.set_cell_state(request.name, request.state))

    @_rpc
    def RegisterRoute(self, request, caller):  # noqa: N802
        return route_msg(self.service.register_route(request.organization_id, request.cell,
                                                     actor=self.actor(request.actor, caller), reason=request.reason))

    @_rpc
    def Classify(self, request, caller):  # noqa: N802
        return route_msg(self.service.classify(request.organization_id))

    @_rpc
    def ListRoutes(self, request, caller):  # noqa: N802
        cell = request.cell if request.HasField("cell") else None
        return pb.ListRoutesResponse(routes=[route_msg(r) for r in self.service.list_routes(cell)])

    @_rpc
    def Freeze(self, request, caller):  # noqa: N802
        return route_msg(self.service.freeze(request.organization_id, request.token,
                                             expected_cell=request.expected_cell,
                                             actor=self.actor(request.actor, caller), reason=request.reason))

    @_rpc
    def Refence(self, request, caller):  # noqa: N802
        return route_msg(self.service.refence(request.organization_id, request.old_token, request.new_token,
                                              actor=self.actor(request.actor, caller), reason=request.reason))

    @_rpc
    def Flip(self, request, caller):  # noqa: N802
        return route_msg(self.service.flip(request.organization_id, request.from_cell, request.to_cell,
                                           expected_version=request.expected_version, token=request.token,
                                           actor=self.actor(request.actor, caller), reason=request.reason))

    @_rpc
    def Unfreeze(self, request, caller):  # noqa: N802
        return route_msg(self.service.unfreeze(request.organization_id, request.token,
                                               actor=self.actor(request.actor, caller), reason=request.reason))

    @_rpc
    def History(self, request, caller):  # noqa: N802
        return pb.HistoryResponse(entries=[history_msg(e) for e in self.service.history(request.organization_id)])

    @_rpc
    def Repair(self, request, caller):  # noqa: N802
        result = self.service.repair(request.organization_id, actor=self.actor(request.actor, caller),
                                     reason=request.reason)
        if result.cleared:
            log.warning("repair: organization %s unfrozen by %s: %s", request.organization_id,
                        self.actor(request.actor, caller), request.reason)
        return pb.RepairResponse(route=route_msg(result.route), cleared=result.cleared,
                                 cleared_token_digest=result.cleared_token_digest)

    def WatchRoutes(self, request, context):  # noqa: N802 - a server stream: not wrapped by _rpc
        try:
            caller = self.authorize(context, "WatchRoutes", RPC_ROLES["WatchRoutes"])
        except Exception as exc:  # noqa: BLE001
            _refuse(context, "WatchRoutes", exc)
        stop = threading.Event()
        context.add_callback(stop.set)  # the caller went away: the stream's thread returns
        log.info("WatchRoutes: streaming routes to %s (%s)", context.peer(), caller.name)
        try:
            for event in self.hub.watch(stop):
                yield from event_messages(event)
        except Exception as exc:  # noqa: BLE001
            _refuse(context, "WatchRoutes", exc)
        finally:
            log.info("WatchRoutes: stream to %s ended", context.peer())


def build_server(service: TopologyService, listen: str, *, credentials: grpc.ServerCredentials | None = None,
                 max_workers: int = 16, max_watchers: int = 64, hub=None) -> grpc.Server:
    """A gRPC server for ``service`` bound to ``listen`` (HOST:PORT or unix:PATH), not yet started.

    ``credentials``: mutual TLS (:func:`migrator.topology.tls.server_credentials`); None serves in clear
    and trusts every caller (the caller checks the address with ``check_listen`` first). Each route
    stream (WatchRoutes) holds a thread: ``max_watchers`` of them on top of ``max_workers`` for calls.
    ``hub``: the process's :class:`~migrator.topology.watch.RouteWatchHub` (made here if None)."""

    if hub is None:
        hub = RouteWatchHub(service, heartbeat_s=service.watch_heartbeat_s, max_watchers=max_watchers)
    # so_reuseport off: a second server on the same port must fail, not silently share it.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers + max_watchers,
                                                    thread_name_prefix="topology"),
                         options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_TopologyServicer_to_server(TopologyServicer(service, tls=credentials is not None, hub=hub), server)
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
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
    check_listen(settings, listen)
    credentials = server_credentials(settings) if settings.topology.tls else None
    if credentials is not None:
        _warn_if_expiring(settings)
    log.info("control database %s: upgrading schema", mask_dsn(settings.control_dsn))
    upgrade_control_db(settings.control_dsn)

    service = TopologyService(settings.control_dsn, notify_channel=settings.topology.notify_channel,
                              sequence_block=settings.topology.sequence_block,
                              watch_heartbeat_s=settings.topology.watch_heartbeat_s)
    hub = RouteWatchHub(service, heartbeat_s=settings.topology.watch_heartbeat_s,
                        max_watchers=settings.topology.max_watchers).start()
    server = build_server(service, listen, credentials=credentials, max_watchers=settings.topology.max_watchers,
                          hub=hub)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    server.start()
    log.info("topology service listening on %s (%s; control database %s, notify channel %s)", listen,
             "mutual TLS, callers authorized by certificate role" if credentials else "no TLS",
             mask_dsn(settings.control_dsn), settings.topology.notify_channel)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        hub.close()  # route streams end first: their followers reconnect to the next server
        server.stop(STOP_GRACE_S).wait()
        log.info("topology service stopped")


EXPIRY_WARNING_DAYS = 30


def _warn_if_expiring(settings) -> None:

    tls = settings.topology.tls
    for key in ("server_cert", "ca"):
        try:
            info = describe(settings.resolve_path(getattr(tls, key)))
        except CertificateError as exc:
            raise MigratorError(f"topology.tls.{key}: {exc.message}",
                                "make the certificates with `migrator topology certs init DIR`") from None
        if info["days_left"] < 0:
            raise MigratorError(f"topology.tls.{key} {info['path']} expired at {info['not_after']}",
                                "issue new certificates: docs/runbooks/topology-certificate-expiring.md")
        if info["days_left"] < EXPIRY_WARNING_DAYS:
            log.warning("topology.tls.%s %s expires in %.0f days (%s): rotate it "
                        "(docs/runbooks/topology-certificate-expiring.md)", key, info["path"], info["days_left"],
                        info["not_after"])
