"""A gRPC client of the Topology Service with the same methods as :class:`TopologyService`.

A refusal arrives as the same :class:`~migrator.errors.MigratorError` subclass, message and hint as
in-process. A server that cannot be reached is retried (every topology call is idempotent), then
reported as :class:`~migrator.errors.CellUnavailable`. Create clients after forking (gRPC channels
do not survive ``fork``).

With ``topology.tls`` the channel is mutual TLS: the client shows its certificate (whose role decides
what it may call) and trusts only the fleet's CA. A handshake the server refuses (no certificate, one
from another CA, an expired one) looks like an unreachable server from this side: the error says to
check the certificates too.
"""

from __future__ import annotations

import json
import os

import grpc
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from migrator.errors import CellUnavailable, MigratorError
from migrator.topology.proto import topology_pb2 as pb
from migrator.topology.proto import topology_pb2_grpc as pb_grpc
from migrator.topology.server import ERROR_METADATA_KEY
from migrator.topology.service import CellInfo, RepairResult, RouteInfo, TopologyService
from migrator.topology.tls import ClientTls, client_tls

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 5
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]


def _error_classes() -> dict[str, type[MigratorError]]:
    classes: dict[str, type[MigratorError]] = {}
    todo = [MigratorError]
    while todo:
        cls = todo.pop()
        classes.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return classes


def error_from_rpc(exc: grpc.RpcError, address: str, *, tls: bool = False) -> MigratorError:
    """The MigratorError a failed call stands for (the server's own class when it sent one)."""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY:
            data = json.loads(value)
            cls = _error_classes().get(data.get("code"), MigratorError)
            err = cls(data.get("message") or exc.details(), data.get("hint"))
            if cls is MigratorError and data.get("code"):
                err.code = data["code"]
            return err
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        what = "cannot be reached" if code == grpc.StatusCode.UNAVAILABLE else "did not answer in time"
        hint = "start it with `migrator topology serve`, or check topology.address in the config"
        if tls:
            hint += ("; if it runs, the TLS handshake may have been refused: check that topology.tls.client_cert "
                     "is signed by the server's CA and not expired (migrator topology certs show FILE), and that "
                     "topology.tls.ca signed the server's certificate")
        return CellUnavailable(f"the Topology Service at {address} {what} ({exc.details()})", hint)
    return MigratorError(f"the Topology Service at {address} failed: {code.name}: {exc.details()}",
                         "see the `migrator topology serve` log")


def _transport_unavailable(exc: BaseException) -> bool:
    """UNAVAILABLE from the transport (not a refusal sent by the service itself)."""
    if not isinstance(exc, grpc.RpcError) or exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return not any(key == ERROR_METADATA_KEY for key, _ in (exc.trailing_metadata() or ()))


def _route(msg: pb.Route) -> RouteInfo:
    digest = msg.token_digest if msg.HasField("token_digest") else None
    return RouteInfo(msg.organization_id, msg.cell, msg.version, msg.state, digest)


def _cell(msg: pb.Cell) -> CellInfo:
    return CellInfo(msg.name, msg.address, msg.state, msg.seq_min, msg.seq_max)


def _history(msg: pb.HistoryEntry) -> dict:
    optional = ("from_cell", "to_cell", "token_digest")
    return {name: (getattr(msg, name) if name not in optional or msg.HasField(name) else None)
            for name in pb.HistoryEntry.DESCRIPTOR.fields_by_name}


class TopologyClient:
    """The Topology Service at ``address`` (HOST:PORT or unix:PATH); the methods of :class:`TopologyService`.

    ``tls``: mutual TLS material (:func:`migrator.topology.tls.client_tls`); None: a plain channel."""

    def __init__(self, address: str, *, tls: ClientTls | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 attempts: int = DEFAULT_ATTEMPTS):
        self.address = address
        self.timeout = timeout
        self.tls = tls is not None
        if tls is not None:
            self._channel = grpc.secure_channel(address, tls.credentials(),
                                                options=_CHANNEL_OPTIONS + tls.options(address))
        else:
            self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.TopologyStub(self._channel)
        self._retrying = retry(retry=retry_if_exception(_transport_unavailable), stop=stop_after_attempt(attempts),
                               wait=wait_exponential(multiplier=0.2, max=2), reraise=True)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TopologyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, rpc: str, request):
        method = getattr(self._stub, rpc)
        try:
            return self._retrying(method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self.address, tls=self.tls) from None

    # -- cells ------------------------------------------------------------------------------------

    def register_cell(self, name: str, address: str = "", state: str = "active") -> CellInfo:
        return _cell(self._call("RegisterCell", pb.RegisterCellRequest(name=name, address=address, state=state)))

    def set_cell_state(self, name: str, state: str) -> CellInfo:
        return _cell(self._call("SetCellState", pb.SetCellStateRequest(name=name, state=state)))

    def get_cell(self, name: str) -> CellInfo:
        return _cell(self._call("GetCell", pb.GetCellRequest(name=name)))

    def list_cells(self) -> list[CellInfo]:
        return [_cell(c) for c in self._call("ListCells", pb.ListCellsRequest()).cells]

    # -- routes -----------------------------------------------------------------------------------

    def register_route(self, organization_id: int, cell: str, *, actor: str = "", reason: str = "") -> RouteInfo:
        return _route(self._call("RegisterRoute", pb.RegisterRouteRequest(
            organization_id=organization_id, cell=cell, actor=actor, reason=reason)))

    def classify(self, organization_id: int) -> RouteInfo:
        return _route(self._call("Classify", pb.ClassifyRequest(organization_id=organization_id)))

    def list_routes(self, cell: str | None = None) -> list[RouteInfo]:
        return [_route(r) for r in self._call("ListRoutes", pb.ListRoutesRequest(cell=cell)).routes]

    def freeze(self, organization_id: int, token: str, *, expected_cell: str, actor: str = "",
               reason: str = "") -> RouteInfo:
        return _route(self._call("Freeze", pb.FreezeRequest(
            organization_id=organization_id, token=token, expected_cell=expected_cell, actor=actor, reason=reason)))

    def refence(self, organization_id: int, old_token: str, new_token: str, *, actor: str = "",
                reason: str = "") -> RouteInfo:
        return _route(self._call("Refence", pb.RefenceRequest(
            organization_id=organization_id, old_token=old_token, new_token=new_token, actor=actor, reason=reason)))

    def flip(self, organization_id: int, from_cell: str, to_cell: str, *, expected_version: int, token: str,
             actor: str = "", reason: str = "") -> RouteInfo:
        return _route(self._call("Flip", pb.FlipRequest(
            organization_id=organization_id, from_cell=from_cell, to_cell=to_cell,
            expected_version=expected_version, token=token, actor=actor, reason=reason)))

    def unfreeze(self, organization_id: int, token: str, *, actor: str = "", reason: str = "") -> RouteInfo:
        return _route(self._call("Unfreeze", pb.UnfreezeRequest(
            organization_id=organization_id, token=token, actor=actor, reason=reason)))

    def history(self, organization_id: int) -> list[dict]:
        return [_history(e) for e in self._call("History", pb.HistoryRequest(organization_id=organization_id)).entries]

    def repair(self, organization_id: int, *, actor: str = "", reason: str) -> RepairResult:
        msg = self._call("Repair", pb.RepairRequest(organization_id=organization_id, actor=actor, reason=reason))
        digest = msg.cleared_token_digest if msg.HasField("cleared_token_digest") else None
        return RepairResult(_route(msg.route), msg.cleared, digest)


_SHARED: dict[tuple, TopologyClient] = {}


def topology_client(settings, *, shared: bool = False) -> TopologyClient | TopologyService:
    """The Topology Service as configured: over gRPC if ``topology.address`` is set (mutual TLS with
    ``topology.tls``), else in-process (whoever holds ``control_dsn`` may do anything anyway).

    ``shared``: one client (one gRPC channel, thread-safe) per address and certificate in this process,
    reused by later calls, so a worker's steps do not each open a channel. Keyed by process id (fork).
    """
    address = settings.topology.address
    if address:
        if not shared:
            return TopologyClient(address, tls=client_tls(settings))
        tls = settings.topology.tls
        key = (os.getpid(), address, tls.model_dump_json() if tls else None, settings.config_path)
        client = _SHARED.get(key)
        if client is None:
            client = _SHARED[key] = TopologyClient(address, tls=client_tls(settings))
        return client
    return TopologyService(settings.control_dsn, notify_channel=settings.topology.notify_channel,
                           sequence_block=settings.topology.sequence_block)

