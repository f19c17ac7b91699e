"""What the Topology Service answers: routes, cells, repairs. Plain data, cheap to import.

Routers and applications import this (through :mod:`~migrator.topology.client`) without the service,
SQLAlchemy or the control database, so a route lookup stays fast to start (``migrator topology
classify``) and light to embed.

A route's ``version`` counts its flips (the compare-and-set of a move expects it); its ``revision``
is the id of the route's latest change in ``route_history`` (register, freeze, refence, flip,
unfreeze, repair). Revisions of one organization grow with every change, in commit order, so a
follower of the change stream keeps, per organization, the route of the highest revision it has seen
and never goes back (docs/adr/0018-edge-router.md).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field


def token_digest(token: str | None) -> str | None:
    """What answers show of a move token: the first 16 hex digits of its SHA-256."""
    if not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RouteInfo:
    organization_id: int
    cell: str
    version: int
    state: str  # active | frozen
    token_digest: str | None  # digest of the token holding the freeze (never the token)
    # route_history id of the route's latest change (0: not known); not part of equality.
    revision: int = field(default=0, compare=False)

    @property
    def frozen(self) -> bool:
        return self.state == "frozen"

    def held_by(self, token: str | None) -> bool:
        """Whether ``token`` holds this route's freeze."""
        mine = token_digest(token)
        return bool(self.frozen and mine and self.token_digest and hmac.compare_digest(mine, self.token_digest))

    def holder(self, tokens) -> str | None:
        """The one of ``tokens`` that holds this route's freeze, or None."""
        return next((t for t in tokens if self.held_by(t)), None)

    def as_dict(self) -> dict:
        return {"organization_id": self.organization_id, "cell": self.cell, "version": self.version,
                "state": self.state, "token_digest": self.token_digest, "revision": self.revision}


@dataclass(frozen=True)
class RepairResult:
    route: RouteInfo
    cleared: bool  # False: the route was not frozen, nothing changed
    cleared_token_digest: str | None = None


@dataclass(frozen=True)
class CellInfo:
    name: str
    address: str
    state: str
    seq_min: int
    seq_max: int


# -- the route change stream (WatchRoutes; migrator/topology/watch.py) -------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Every route, first in each stream."""

    routes: list[RouteInfo]
    head: int  # the newest revision committed when it was read (>= every route's revision)
    heartbeat_s: float  # heartbeats come at least this often while nothing changes


@dataclass(frozen=True)
class Change:
    """One route change, as it committed."""

    route: RouteInfo
    action: str  # register | freeze | refence | flip | unfreeze | repair


@dataclass(frozen=True)
class Heartbeat:
    head: int  # the newest revision committed when it was sent
