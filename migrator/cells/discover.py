"""``migrator orgs discover``: find the organizations living in a cell and register their routes.

An adopted fleet already has organizations in its cells, but the Topology Service knows none of
them. Discovery reads the organization ids of one cell from the root table the dictionary names
(``root:``, its primary key is the organization id), compares them with every other configured
cell and with the routes the Topology Service holds, and sorts each organization into:

``registered``      routed to this cell already: nothing to do;
``unregistered``    only in this cell and routed nowhere: ``--register`` routes it here
                    (``registered_now``);
``moved_away``      routed to another cell and frozen here: the source copy of a completed move,
                    awaiting ``migrator cleanup``; not a conflict;
``conflict``        never registered, with a reason: found in several cells, routed to another
                    cell where it has no rows, or present both here and in the cell it is routed to
                    without being frozen here (two live copies).

Routes pointing at this cell for organizations without a row here are conflicts too (``missing``).
Nothing is ever re-routed: registering is idempotent and refuses an organization routed elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from migrator.cells.introspect import introspect
from migrator.cells.names import qualified
from migrator.db import cell_connection
from migrator.dictionary import load_dictionary
from migrator.errors import MigratorError

log = logging.getLogger(__name__)

REGISTERED = "registered"
UNREGISTERED = "unregistered"
REGISTERED_NOW = "registered_now"
MOVED_AWAY = "moved_away"
CONFLICT = "conflict"
MISSING = "missing"


@dataclass
class Finding:
    organization_id: int
    status: str
    routed_to: str | None = None
    also_in: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def conflict(self) -> bool:
        return self.status in (CONFLICT, MISSING)

    def as_dict(self) -> dict:
        return {**asdict(self), "conflict": self.conflict}


@dataclass
class Discovery:
    cell: str
    root_table: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def conflicts(self) -> list[Finding]:
        return [f for f in self.findings if f.conflict]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.status] = out.get(f.status, 0) + 1
        return out

    def as_dict(self) -> dict:
        return {"cell": self.cell, "root_table": self.root_table, "counts": self.counts(),
                "conflicts": len(self.conflicts), "organizations": [f.as_dict() for f in self.findings]}


def _org_ids(conn: psycopg.Connection, dictionary, only: list[int] | None = None) -> set[int]:
    """Organization ids in a cell's root table (restricted to ``only`` if given); empty without the table."""
    live = introspect(conn)
    if dictionary.root_table not in live.tables:
        return set()
    key = dictionary.root_key(live)
    query = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(key), qualified(dictionary.root_table))
    if only is not None:
        query = query + sql.SQL(" WHERE {} = ANY(%s)").format(sql.Identifier(key))
        return {int(r[0]) for r in conn.execute(query, (only,))}
    return {int(r[0]) for r in conn.execute(query)}


def _frozen_here(conn: psycopg.Connection) -> set[int]:
    if not conn.execute("SELECT pg_catalog.to_regclass('migrator.frozen_orgs') IS NOT NULL").fetchone()[0]:
        return set()
    return {int(r[0]) for r in conn.execute("SELECT organization_id FROM migrator.frozen_orgs")}


def discover_orgs(settings, cell: str, *, register: bool = False, topology=None, dictionary=None,
                  actor: str = "orgs discover") -> Discovery:
    """Classify the organizations of ``cell`` (see the module docstring); ``register`` routes the new ones."""

    settings.cell(cell)
    dictionary = dictionary or load_dictionary(settings.dictionary_file())
    with cell_connection(settings, cell, autocommit=True) as conn:
        here = _org_ids(conn, dictionary)
        frozen = _frozen_here(conn)
    ids = sorted(here)
    elsewhere: dict[int, list[str]] = {}
    present_in: dict[str, set[int]] = {cell: here}
    for other in settings.cells:
        if other == cell:
            continue
        try:
            with cell_connection(settings, other, autocommit=True) as conn:
                found = _org_ids(conn, dictionary, only=ids)
        except MigratorError as exc:
            raise MigratorError(
                f"discovery checks every configured cell for other copies of the organizations of {cell!r}: "
                f"{exc.message}", exc.hint) from None
        present_in[other] = found
        for org in found:
            elsewhere.setdefault(org, []).append(other)

    own_client = topology is None
    if own_client:
        # deferred: the gRPC client is slow to import and only this path needs it
        from migrator.topology.client import topology_client

        topology = topology_client(settings)
    try:
        routes = {r.organization_id: r for r in topology.list_routes()}
        report = Discovery(cell=cell, root_table=dictionary.root_table)
        for org in ids:
            report.findings.append(_classify(org, cell, routes.get(org), elsewhere.get(org, []), frozen,
                                             present_in))
        for org, route in sorted(routes.items()):
            if route.cell == cell and org not in here:
                report.findings.append(Finding(org, MISSING, routed_to=cell, also_in=elsewhere.get(org, []),
                                               reason=f"routed to {cell}, where it has no row in "
                                                      f"{dictionary.root_table}"))
        if register:
            for finding in report.findings:
                if finding.status == UNREGISTERED:
                    _register(topology, finding, cell, actor)
    finally:
        if own_client:
            close = getattr(topology, "close", None)
            if close is not None:
                close()
    report.findings.sort(key=lambda f: f.organization_id)
    return report


def _classify(org: int, cell: str, route, also_in: list[str], frozen: set[int],
              present_in: dict[str, set[int]]) -> Finding:
    if route is not None:
        if route.cell == cell:
            return Finding(org, REGISTERED, routed_to=cell, also_in=also_in)
        if org in frozen:
            return Finding(org, MOVED_AWAY, routed_to=route.cell, also_in=also_in,
                           reason=f"moved to {route.cell}; the copy here awaits cleanup (frozen)")
        if route.cell not in present_in:
            return Finding(org, CONFLICT, routed_to=route.cell, also_in=also_in,
                           reason=f"routed to {route.cell}, which is not in the config; its rows are here")
        if org not in present_in[route.cell]:
            return Finding(org, CONFLICT, routed_to=route.cell, also_in=also_in,
                           reason=f"routed to {route.cell}, where it has no rows; its rows are here")
        return Finding(org, CONFLICT, routed_to=route.cell, also_in=also_in,
                       reason=f"present here and in {route.cell} (where it is routed), and not frozen here: "
                              "two live copies")
    if also_in:
        return Finding(org, CONFLICT, also_in=also_in,
                       reason=f"found in several cells ({', '.join([cell, *also_in])}); not registered")
    return Finding(org, UNREGISTERED)


def _register(topology, finding: Finding, cell: str, actor: str) -> None:
    try:
        route = topology.register_route(finding.organization_id, cell, actor=actor,
                                        reason=f"adopted: found in cell {cell}")
    except MigratorError as exc:  # routed elsewhere meanwhile (RouteConflict, RouteFrozen)
        finding.status, finding.reason = CONFLICT, exc.message
        return
    if route.cell == cell:
        finding.status, finding.routed_to = REGISTERED_NOW, cell
    else:  # pragma: no cover - register_route raises instead
        finding.status, finding.routed_to = CONFLICT, route.cell
        finding.reason = f"routed to {route.cell} meanwhile"
