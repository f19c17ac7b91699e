"""A gRPC client of the Topology Service with the same methods as :class:`TopologyService`.

A refusal arrives as the same :class:`~migrator.errors.MigratorError` subclass, message and hint as
in-process. A server that cannot be reached is retried (every topology call is idempotent), then
reported as :class:`~migrator.errors.CellUnavailable`. Create clients after forking (gRPC channels
do not survive ``fork``).
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
from migrator.topology.service import CellInfo, RouteInfo, TopologyService

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


def error_from_rpc(exc: grpc.RpcError, address: str) -> MigratorError:
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
        return CellUnavailable(f"the Topology Service at {address} {what} ({exc.details()})",
                               "start it with `migrator topology serve`, or check topology.address in the config")
    return MigratorError(f"the Topology Service at {address} failed: {code.name}: {exc.details()}",
                         "see the `migrator topology serve` log")


def _transport_unavailable(exc: BaseException) -> bool:
    """UNAVAILABLE from the transport (not a refusal sent by the service itself)."""
    if not isinstance(exc, grpc.RpcError) or exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return not any(key == ERROR_METADATA_KEY for key, _ in (exc.trailing_metadata() or ()))


def _route(msg: pb.Route) -> RouteInfo:
    token = msg.move_token if msg.HasField("move_token") else None
    return RouteInfo(msg.organization_id, msg.cell, msg.version, msg.state, token)


def _cell(msg: pb.Cell) -> CellInfo:
    return CellInfo(msg.name, msg.address, msg.state, msg.seq_min, msg.seq_max)


def _history(msg: pb.HistoryEntry) -> dict:
    optional = ("from_cell", "to_cell", "token")
    return {name: (getattr(msg, name) if name not in optional or msg.HasField(name) else None)
            for name in pb.HistoryEntry.DESCRIPTOR.fields_by_name}


class TopologyClient:
    """The Topology Service at ``address`` (HOST:PORT); the methods of :class:`TopologyService`."""

    def __init__(self, address: str, *, timeout: float = DEFAULT_TIMEOUT_S, attempts: int = DEFAULT_ATTEMPTS):
        self.address = address
        self.timeout = timeout
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
            raise error_from_rpc(exc, self.address) from None

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


_SHARED: dict[tuple[int, str], TopologyClient] = {}


def topology_client(settings, *, shared: bool = False) -> TopologyClient | TopologyService:
    """The Topology Service as configured: over gRPC if ``topology.address`` is set, else in-process.

    ``shared``: one client (one gRPC channel, thread-safe) per address in this process, reused by
    later calls, so a worker's steps do not each open a channel. Keyed by process id (fork).
    """
    if settings.topology.address:
        if not shared:
            return TopologyClient(settings.topology.address)
        key = (os.getpid(), settings.topology.address)
        client = _SHARED.get(key)
        if client is None:
            client = _SHARED[key] = TopologyClient(settings.topology.address)
        return client
    return TopologyService(settings.control_dsn, notify_channel=settings.topology.notify_channel,
                           sequence_block=settings.topology.sequence_block)

