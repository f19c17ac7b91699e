"""The Topology Service: the authoritative map organization -> cell, kept in the control database.

Every route change is one transaction that updates ``routes``, appends a ``route_history`` row and
sends ``pg_notify(channel, json)`` (delivered on commit), so router caches invalidate at once.
The flip is a single compare-and-set ``UPDATE``: it happens exactly once, or not at all. Every
method is idempotent, so callers (and the gRPC client) may retry them freely.

No answer carries a move token: a route or history entry shows the token's digest
(:func:`token_digest`), which a caller holding the token can compare (``RouteInfo.held_by``) and
nobody can use to act. ``repair`` clears a freeze whose token no live move owns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import psycopg
from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from migrator.control.engine import control_engine
from migrator.control.models import Cell, Move, Route, RouteHistory
from migrator.dsn import mask_dsn
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
from migrator.moves.workflow import ACTIVE_STATES
from migrator.topology.routes import CellInfo, RepairResult, RouteInfo, token_digest
from migrator.topology.watch import RouteWatchHub

__all__ = ["CellInfo", "RepairResult", "RouteConflict", "RouteInfo", "TopologyService", "live_move_owning",
           "token_digest"]

CELL_STATES = ("active", "draining", "offline")
ROUTE_STATES = ("active", "frozen")
_CELL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
# pg_advisory_xact_lock key serializing sequence-range claims ("cellseq" in ASCII).
_SEQUENCE_LOCK = 0x63656C6C736571


class RouteConflict(MigratorError):
    """An organization is already routed to another cell (re-registering cannot move it)."""

    code = "route_conflict"


@dataclass(frozen=True)
class _Held:
    """A route as loaded inside the service, with its raw token (never returned to a caller)."""

    route: RouteInfo
    token: str | None

    def __getattr__(self, name):
        return getattr(self.route, name)


_ROUTE_COLUMNS = (Route.organization_id, Route.cell, Route.version, Route.state, Route.move_token)
# A route as read: with its revision, the id of its latest history row (index on organization_id).
_REVISION = (select(func.coalesce(func.max(RouteHistory.id), 0))
             .where(RouteHistory.organization_id == Route.organization_id)
             .correlate(Route).scalar_subquery().label("revision"))
_READ_COLUMNS = (*_ROUTE_COLUMNS, _REVISION)
_CELL_COLUMNS = (Cell.name, Cell.address, Cell.state, Cell.seq_min, Cell.seq_max)


def _route(row) -> RouteInfo:
    revision = int(getattr(row, "revision", 0) or 0)
    return RouteInfo(int(row.organization_id), row.cell, int(row.version), row.state, token_digest(row.move_token),
                     revision)


def _held(row) -> _Held:
    return _Held(_route(row), row.move_token)


def _cell(row) -> CellInfo:
    return CellInfo(row.name, row.address, row.state, int(row.seq_min), int(row.seq_max))


def _describe(route: RouteInfo) -> str:
    held = f" by token sha256:{route.token_digest}" if route.token_digest else ""
    return f"on {route.cell} at version {route.version}, {route.state}{held}"


def _shown(token: str) -> str:
    return f"sha256:{token_digest(token)}"


class TopologyService:
    """Cells, their sequence ranges, and the routes of organizations, in the control database."""

    def __init__(self, control_dsn: str, *, notify_channel: str = "topology_routes", sequence_block: int = 10**12,
                 watch_heartbeat_s: float = 1.0):
        if sequence_block < 1:
            raise MigratorError(f"sequence_block must be positive, not {sequence_block}",
                                "set topology.sequence_block in the config")
        self.control_dsn = control_dsn
        self.notify_channel = notify_channel
        self.sequence_block = sequence_block
        self.watch_heartbeat_s = watch_heartbeat_s
        self._engine = control_engine(control_dsn)
        self._hub = None

    def close(self) -> None:
        """Stop following route changes, if :meth:`watch_routes` started to (the engine is shared)."""
        if self._hub is not None:
            self._hub.close()
            self._hub = None

    def watch_routes(self, stop=None):
        """The route map, then every change as it commits (:mod:`migrator.topology.watch`), in-process."""

        if self._hub is None:
            self._hub = RouteWatchHub(self, heartbeat_s=self.watch_heartbeat_s)
        return self._hub.watch(stop)

    def __enter__(self) -> TopologyService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction; database failures become errors an operator can act on."""
        try:
            with self._engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            orig = exc.orig
            first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
            where = f"control database {mask_dsn(self.control_dsn)}"
            if isinstance(orig, psycopg.errors.UndefinedTable):
                raise MigratorError(f"{where} has no topology tables ({mask_dsn(first)})",
                                    "upgrade its schema: start `migrator topology serve` once") from None
            if isinstance(orig, psycopg.OperationalError) or exc.connection_invalidated:
                raise CellUnavailable(f"{where} does not answer: {mask_dsn(first)}",
                                      "check control_dsn in the config and that PostgreSQL is running") from None
            raise

    def _notify(self, conn: Connection, route: RouteInfo, action: str) -> None:
        payload = {"organization_id": route.organization_id, "cell": route.cell, "version": route.version,
                   "state": route.state, "action": action, "revision": route.revision,
                   "token_digest": route.token_digest}
        conn.execute(select(func.pg_notify(self.notify_channel, json.dumps(payload))))

    def _record(self, conn: Connection, route: RouteInfo, action: str, *, from_cell: str | None,
                to_cell: str | None, token: str | None, actor: str, reason: str) -> RouteInfo:
        """Append the history row and send the notification of a route change (same transaction).

        The route comes back with its new revision (the history row's id)."""
        revision = conn.execute(insert(RouteHistory).values(
            organization_id=route.organization_id, action=action, from_cell=from_cell, to_cell=to_cell,
            version=route.version, token=token, actor=actor or "", reason=reason or "")
            .returning(RouteHistory.id)).scalar_one()
        route = replace(route, revision=int(revision))
        self._notify(conn, route, action)
        return route

    def _load_route(self, conn: Connection, organization_id: int, *, lock: bool = False) -> _Held:
        stmt = select(*_READ_COLUMNS).where(Route.organization_id == organization_id)
        row = conn.execute(stmt.with_for_update(of=Route) if lock else stmt).one_or_none()
        if row is None:
            raise UnknownOrganization(f"organization {organization_id} has no route in the Topology Service",
                                      "register it first (register_route) or check the organization id")
        return _held(row)

    def _load_cell(self, conn: Connection, name: str) -> CellInfo:
        row = conn.execute(select(*_CELL_COLUMNS).where(Cell.name == name)).one_or_none()
        if row is None:
            known = ", ".join(conn.execute(select(Cell.name).order_by(Cell.name)).scalars()) or "none"
            raise UnknownCell(f"unknown cell {name!r} in the Topology Service",
                              f"registered cells: {known}; register it first (migrator cells init)")
        return _cell(row)

    def _set_route(self, conn: Connection, organization_id: int, **values) -> RouteInfo:
        row = conn.execute(update(Route).where(Route.organization_id == organization_id)
                           .values(**values, updated_at=func.now()).returning(*_ROUTE_COLUMNS)).one()
        return _route(row)

    # -- cells ------------------------------------------------------------------------------------

    def register_cell(self, name: str, address: str = "", state: str = "active") -> CellInfo:
        """Register a cell (idempotent). The first registration claims the next free sequence range.

        Re-registering keeps the range and updates the state, and the address when one is given.
        """
        if not _CELL_NAME.fullmatch(name or ""):
            raise MigratorError(f"cell name {name!r} must be 1-63 letters, digits, '-', '_' or '.'")
        _check_state(state, CELL_STATES, "cell")
        with self._tx() as conn:
            # Serialize range claims: two registrations can never take the same range.
            conn.execute(select(func.pg_advisory_xact_lock(_SEQUENCE_LOCK)))
            existing = conn.execute(select(*_CELL_COLUMNS).where(Cell.name == name)).one_or_none()
            if existing is not None:
                values = {"state": state, "updated_at": func.now()}
                if address:
                    values["address"] = address
                row = conn.execute(update(Cell).where(Cell.name == name).values(**values)
                                   .returning(*_CELL_COLUMNS)).one()
                return _cell(row)
            top = conn.execute(select(func.coalesce(func.max(Cell.seq_max), 0))).scalar_one()
            row = conn.execute(pg_insert(Cell).values(
                name=name, address=address or "", state=state, seq_min=top + 1, seq_max=top + self.sequence_block,
            ).returning(*_CELL_COLUMNS)).one()
            return _cell(row)

    def set_cell_state(self, name: str, state: str) -> CellInfo:
        _check_state(state, CELL_STATES, "cell")
        with self._tx() as conn:
            self._load_cell(conn, name)
            row = conn.execute(update(Cell).where(Cell.name == name).values(state=state, updated_at=func.now())
                               .returning(*_CELL_COLUMNS)).one()
            return _cell(row)

    def get_cell(self, name: str) -> CellInfo:
        with self._tx() as conn:
            return self._load_cell(conn, name)

    def list_cells(self) -> list[CellInfo]:
        with self._tx() as conn:
            return [_cell(r) for r in conn.execute(select(*_CELL_COLUMNS).order_by(Cell.seq_min))]

    # -- routes -----------------------------------------------------------------------------------

    def register_route(self, organization_id: int, cell: str, *, actor: str = "", reason: str = "") -> RouteInfo:
        """Route a new organization to ``cell`` (version 1, active). Idempotent for the same cell."""
        with self._tx() as conn:
            self._load_cell(conn, cell)
            row = conn.execute(
                pg_insert(Route).values(organization_id=organization_id, cell=cell, version=1, state="active",
                                        move_token=None)
                .on_conflict_do_nothing(index_elements=[Route.organization_id]).returning(*_ROUTE_COLUMNS)
            ).one_or_none()
            if row is not None:
                return self._record(conn, _route(row), "register", from_cell=None, to_cell=cell, token=None,
                                    actor=actor, reason=reason)
            current = self._load_route(conn, organization_id).route
        if current.cell == cell:
            return current
        if current.frozen:
            raise RouteFrozen(f"organization {organization_id} is being moved: route {_describe(current)}",
                              "wait for the move to finish instead of registering it again")
        raise RouteConflict(f"organization {organization_id} is already routed to {current.cell} "
                            f"(version {current.version}), not {cell}",
                            "to change its cell, move the organization; registering cannot re-route it")

    def classify(self, organization_id: int) -> RouteInfo:
        """Where ``organization_id`` lives (UnknownOrganization if it has no route)."""
        with self._tx() as conn:
            return self._load_route(conn, organization_id).route

    def list_routes(self, cell: str | None = None) -> list[RouteInfo]:
        stmt = select(*_READ_COLUMNS).order_by(Route.organization_id)
        if cell is not None:
            stmt = stmt.where(Route.cell == cell)
        with self._tx() as conn:
            return [_route(r) for r in conn.execute(stmt)]

    def head_revision(self) -> int:
        """The newest route revision (route_history id) committed; 0 when there is none."""
        with self._tx() as conn:
            return int(conn.execute(select(func.coalesce(func.max(RouteHistory.id), 0))).scalar_one())

    def snapshot(self) -> tuple[list[RouteInfo], int]:
        """Every route with its revision, and the head revision read after them (so head >= each revision)."""
        with self._tx() as conn:
            routes = [_route(r) for r in conn.execute(select(*_READ_COLUMNS).order_by(Route.organization_id))]
            head = int(conn.execute(select(func.coalesce(func.max(RouteHistory.id), 0))).scalar_one())
        return routes, head

    def freeze(self, organization_id: int, token: str, *, expected_cell: str, actor: str = "",
               reason: str = "") -> RouteInfo:
        """active -> frozen, held by ``token``. Idempotent when already frozen by the same token."""
        _check_token(token)
        with self._tx() as conn:
            route = self._load_route(conn, organization_id, lock=True)
            if route.frozen and route.token != token:
                raise RouteFrozen(f"organization {organization_id} is already frozen by another move: "
                                  f"route {_describe(route.route)}; freeze with token {_shown(token)} refused",
                                  "wait for that move to finish or abort it; one move per organization")
            if route.cell != expected_cell:
                raise StaleVersion(f"organization {organization_id} is routed {_describe(route.route)}, "
                                   f"not on {expected_cell}; freeze refused",
                                   "the route changed since the move was planned; re-plan it from the current cell")
            if route.frozen:
                return route.route
            route = self._set_route(conn, organization_id, state="frozen", move_token=token)
            return self._record(conn, route, "freeze", from_cell=route.cell, to_cell=route.cell, token=token,
                                actor=actor, reason=reason)

    def refence(self, organization_id: int, old_token: str, new_token: str, *, actor: str = "",
                reason: str = "") -> RouteInfo:
        """Hand the freeze from ``old_token`` to ``new_token`` (a resumed move attempt). Idempotent."""
        _check_token(new_token)
        with self._tx() as conn:
            route = self._load_route(conn, organization_id, lock=True)
            if route.frozen and route.token == new_token:
                return route.route
            if not route.frozen or route.token != old_token:
                raise StaleToken(f"organization {organization_id}: refence from token {_shown(old_token)} to "
                                 f"{_shown(new_token)} refused: route is {_describe(route.route)}",
                                 "only the attempt holding the freeze can hand it over; re-read the move's token")
            route = self._set_route(conn, organization_id, move_token=new_token)
            return self._record(conn, route, "refence", from_cell=route.cell, to_cell=route.cell, token=new_token,
                                actor=actor, reason=reason)

    def flip(self, organization_id: int, from_cell: str, to_cell: str, *, expected_version: int, token: str,
             actor: str = "", reason: str = "") -> RouteInfo:
        """Move the route ``from_cell`` -> ``to_cell`` with one compare-and-set; exactly once.

        The route must be frozen by ``token`` on ``from_cell`` at ``expected_version``; it stays frozen
        (the caller unfreezes) at ``expected_version + 1``. A replay of a flip that already happened
        returns the route without a second history row.
        """
        _check_token(token)
        if from_cell == to_cell:
            raise SameCell(f"organization {organization_id}: cannot flip from {from_cell} to itself",
                           "choose a different target cell")
        cas = (
            update(Route)
            .where(Route.organization_id == organization_id, Route.cell == from_cell,
                   Route.version == expected_version, Route.move_token == token, Route.state == "frozen")
            .values(cell=to_cell, version=Route.version + 1, updated_at=func.now())
            .returning(*_ROUTE_COLUMNS)
        )
        with self._tx() as conn:
            self._load_cell(conn, to_cell)
            for _ in range(2):  # a second try only if the route became flippable meanwhile
                row = conn.execute(cas).one_or_none()
                if row is not None:
                    return self._record(conn, _route(row), "flip", from_cell=from_cell, to_cell=to_cell,
                                        token=token, actor=actor, reason=reason)
                route = self._load_route(conn, organization_id)
                if route.cell == to_cell and route.version == expected_version + 1 and (
                    route.token == token or self._flipped_by(conn, organization_id, route.version, token)
                ):
                    return route.route  # this flip already happened
                if not (route.frozen and route.token == token and route.cell == from_cell
                        and route.version == expected_version):
                    break
        raise _flip_refused(route, from_cell, to_cell, expected_version, token)

    def _flipped_by(self, conn: Connection, organization_id: int, version: int, token: str) -> bool:
        """Whether the flip that produced ``version`` was made with ``token`` (replay after unfreeze)."""
        stmt = select(RouteHistory.id).where(
            RouteHistory.organization_id == organization_id, RouteHistory.action == "flip",
            RouteHistory.version == version, RouteHistory.token == token)
        return conn.execute(stmt.limit(1)).first() is not None

    def unfreeze(self, organization_id: int, token: str, *, actor: str = "", reason: str = "") -> RouteInfo:
        """frozen -> active, token cleared. Idempotent: an active route is returned as is."""
        with self._tx() as conn:
            route = self._load_route(conn, organization_id, lock=True)
            if not route.frozen:
                return route.route
            if route.token != token:
                raise StaleToken(f"organization {organization_id}: unfreeze with token {_shown(token)} refused: "
                                 f"route is {_describe(route.route)}",
                                 "this move attempt no longer holds the freeze; stop and let the current attempt act")
            route = self._set_route(conn, organization_id, state="active", move_token=None)
            return self._record(conn, route, "unfreeze", from_cell=route.cell, to_cell=route.cell, token=token,
                                actor=actor, reason=reason)

    def history(self, organization_id: int) -> list[dict]:
        """The route's history, oldest first (``at`` as an ISO 8601 string)."""
        stmt = (select(RouteHistory.id, RouteHistory.organization_id, RouteHistory.action, RouteHistory.from_cell,
                       RouteHistory.to_cell, RouteHistory.version, RouteHistory.token, RouteHistory.actor,
                       RouteHistory.reason, RouteHistory.at)
                .where(RouteHistory.organization_id == organization_id).order_by(RouteHistory.id))
        with self._tx() as conn:
            rows = conn.execute(stmt).mappings().all()
        out = []
        for row in rows:
            entry = {k: v for k, v in row.items() if k != "token"}
            out.append({**entry, "at": row["at"].isoformat(), "token_digest": token_digest(row["token"])})
        return out

    # -- repair -----------------------------------------------------------------------------------

    def repair(self, organization_id: int, *, actor: str = "", reason: str) -> RepairResult:
        """Clear a freeze whose token no live move owns (a leftover: the move is gone, ended, or the token
        was never a move's). Refused while a live move owns it: abort that move instead."""
        if not (reason or "").strip():
            raise MigratorError("a repair needs a reason", "say why, e.g. --reason 'move 8c1f… was deleted'")
        with self._tx() as conn:
            route = self._load_route(conn, organization_id, lock=True)
            if not route.frozen:
                return RepairResult(route.route, False)
            owner = live_move_owning(conn, organization_id, route.token)
            if owner is not None:
                move_id, state = owner
                raise RouteFrozen(f"organization {organization_id} is frozen by move {move_id}, which is {state}: "
                                  "repair refused (it only clears a freeze no live move owns)",
                                  f"abort that move (migrator abort {move_id}): an abort lifts its freeze")
            cleared = route.token
            fixed = self._set_route(conn, organization_id, state="active", move_token=None)
            self._record(conn, fixed, "repair", from_cell=fixed.cell, to_cell=fixed.cell, token=cleared,
                         actor=actor, reason=reason)
            return RepairResult(fixed, True, token_digest(cleared))


def live_move_owning(conn: Connection, organization_id: int, token: str | None) -> tuple[str, str] | None:
    """(id, state) of a live move of the organization that owns ``token`` (its current token or an
    earlier attempt's), or None. Live: any state but the terminal ones."""
    if not token:
        return None
    owns = (Move.token == token) | Move.previous_tokens.any(token)
    row = conn.execute(select(Move.id, Move.state).where(
        Move.organization_id == organization_id, Move.state.in_(ACTIVE_STATES), owns).limit(1)).first()
    return (str(row.id), row.state) if row is not None else None


def _flip_refused(held: _Held, from_cell: str, to_cell: str, expected_version: int,
                  token: str) -> MigratorError:
    route = held.route
    org = route.organization_id
    what = f"organization {org}: flip {from_cell} -> {to_cell} at version {expected_version} refused"
    if held.token != token:
        how = "not frozen" if not route.frozen else f"frozen by token sha256:{route.token_digest}"
        return StaleToken(f"{what}: route is {how}, not by token {_shown(token)} (route {_describe(route)})",
                          "this move attempt no longer holds the freeze; stop and let the current attempt act")
    if route.version != expected_version:
        return StaleVersion(f"{what}: route is at version {route.version} on {route.cell}",
                            f"another change won; re-read the route (migrator topology history {org})")
    return InvalidMoveState(f"{what}: route is {_describe(route)}",
                            "flip only from the cell the route is on, while frozen by the move")


def _check_state(state: str, allowed: tuple[str, ...], what: str) -> None:
    if state not in allowed:
        raise MigratorError(f"{what} state {state!r} is not one of {', '.join(allowed)}")


def _check_token(token: str) -> None:
    if not token:
        raise MigratorError("a move token is required", "pass the move's fencing token")
