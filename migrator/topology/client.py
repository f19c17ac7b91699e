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
import threading
import time

import grpc
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from migrator.errors import CellUnavailable, MigratorError, WatchEnded
from migrator.topology.messages import ERROR_METADATA_KEY, cell_of, history_of, route_of
from migrator.topology.proto import topology_pb2 as pb
from migrator.topology.proto import topology_pb2_grpc as pb_grpc
from migrator.topology.routes import CellInfo, Change, Heartbeat, RepairResult, RouteInfo, Snapshot
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
        return cell_of(self._call("RegisterCell", pb.RegisterCellRequest(name=name, address=address, state=state)))

    def set_cell_state(self, name: str, state: str) -> CellInfo:
        return cell_of(self._call("SetCellState", pb.SetCellStateRequest(name=name, state=state)))

    def get_cell(self, name: str) -> CellInfo:
        return cell_of(self._call("GetCell", pb.GetCellRequest(name=name)))

    def list_cells(self) -> list[CellInfo]:
        return [cell_of(c) for c in self._call("ListCells", pb.ListCellsRequest()).cells]

    # -- routes -----------------------------------------------------------------------------------

    def register_route(self, organization_id: int, cell: str, *, actor: str = "", reason: str = "") -> RouteInfo:
        return route_of(self._call("RegisterRoute", pb.RegisterRouteRequest(
            organization_id=organization_id, cell=cell, actor=actor, reason=reason)))

    def classify(self, organization_id: int) -> RouteInfo:
        return route_of(self._call("Classify", pb.ClassifyRequest(organization_id=organization_id)))

    def list_routes(self, cell: str | None = None) -> list[RouteInfo]:
        return [route_of(r) for r in self._call("ListRoutes", pb.ListRoutesRequest(cell=cell)).routes]

    def freeze(self, organization_id: int, token: str, *, expected_cell: str, actor: str = "",
               reason: str = "") -> RouteInfo:
        return route_of(self._call("Freeze", pb.FreezeRequest(
            organization_id=organization_id, token=token, expected_cell=expected_cell, actor=actor, reason=reason)))

    def refence(self, organization_id: int, old_token: str, new_token: str, *, actor: str = "",
                reason: str = "") -> RouteInfo:
        return route_of(self._call("Refence", pb.RefenceRequest(
            organization_id=organization_id, old_token=old_token, new_token=new_token, actor=actor, reason=reason)))

    def flip(self, organization_id: int, from_cell: str, to_cell: str, *, expected_version: int, token: str,
             actor: str = "", reason: str = "") -> RouteInfo:
        return route_of(self._call("Flip", pb.FlipRequest(
            organization_id=organization_id, from_cell=from_cell, to_cell=to_cell,
            expected_version=expected_version, token=token, actor=actor, reason=reason)))

    def unfreeze(self, organization_id: int, token: str, *, actor: str = "", reason: str = "") -> RouteInfo:
        return route_of(self._call("Unfreeze", pb.UnfreezeRequest(
            organization_id=organization_id, token=token, actor=actor, reason=reason)))

    def history(self, organization_id: int) -> list[dict]:
        request = pb.HistoryRequest(organization_id=organization_id)
        return [history_of(e) for e in self._call("History", request).entries]

    def repair(self, organization_id: int, *, actor: str = "", reason: str) -> RepairResult:
        msg = self._call("Repair", pb.RepairRequest(organization_id=organization_id, actor=actor, reason=reason))
        digest = msg.cleared_token_digest if msg.HasField("cleared_token_digest") else None
        return RepairResult(route_of(msg.route), msg.cleared, digest)


    # -- the route change stream --------------------------------------------------------------------

    def watch_routes(self, stop: threading.Event | None = None, *, first_message_s: float | None = None):
        """The route map, then every change as it commits (:class:`Snapshot`, then :class:`Change` and
        :class:`Heartbeat`), until ``stop`` is set (then it returns).

        A stream that the server ends, that breaks, or that stays silent for 3 heartbeats + 2 s raises
        :class:`~migrator.errors.CellUnavailable` (:class:`~migrator.errors.WatchEnded`): call again,
        the new stream starts with a fresh snapshot. Not retried here: the caller decides."""
        call = self._stub.WatchRoutes(pb.WatchRoutesRequest())
        state = {"last": time.monotonic(), "limit": first_message_s or self.timeout, "silent": False}
        done = threading.Event()

        def watchdog() -> None:
            while not done.wait(0.1):
                if stop is not None and stop.is_set():
                    call.cancel()
                    return
                if time.monotonic() - state["last"] > state["limit"]:
                    state["silent"] = True
                    call.cancel()
                    return

        threading.Thread(target=watchdog, name="route-watch-watchdog", daemon=True).start()
        chunks: list[RouteInfo] = []
        try:
            for msg in call:
                state["last"] = time.monotonic()
                kind = msg.kind
                if kind == pb.RouteEvent.SNAPSHOT:
                    chunks.extend(route_of(r) for r in msg.routes)
                elif kind == pb.RouteEvent.SYNCED:
                    heartbeat_s = (msg.heartbeat_ms or 1000) / 1000
                    state["limit"] = 3 * heartbeat_s + 2.0
                    yield Snapshot(chunks, msg.head, heartbeat_s)
                    chunks = []
                elif kind == pb.RouteEvent.CHANGE:
                    yield Change(route_of(msg.routes[0]), msg.action)
                elif kind == pb.RouteEvent.HEARTBEAT:
                    yield Heartbeat(msg.head)
            raise WatchEnded(f"the route stream from {self.address} ended", "watch again")
        except grpc.RpcError as exc:
            if stop is not None and stop.is_set():
                return
            if state["silent"]:
                raise WatchEnded(f"the route stream from {self.address} was silent for {state['limit']:.1f} s",
                                 "watch again; check the Topology Service and the network") from None
            raise error_from_rpc(exc, self.address, tls=self.tls) from None
        finally:
            done.set()
            call.cancel()


_SHARED: dict[tuple, TopologyClient] = {}


def topology_client(settings, *, shared: bool = False) -> TopologyClient | TopologyService:  # noqa: F821
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
    # deferred: the in-process service (SQLAlchemy) only when topology.address is null
    from migrator.topology.service import TopologyService

    return TopologyService(settings.control_dsn, notify_channel=settings.topology.notify_channel,
                           sequence_block=settings.topology.sequence_block,
                           watch_heartbeat_s=settings.topology.watch_heartbeat_s)

