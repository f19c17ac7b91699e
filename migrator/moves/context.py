"""What a step needs while it runs: settings, the move, its cells, dictionary and Topology Service."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import cached_property

from migrator.config import Settings
from migrator.control.models import Move
from migrator.copy.spec import TableSpec, stabilize_session, table_specs
from migrator.db import connect
from migrator.moves.store import MoveStore


@dataclass
class MoveContext:
    settings: Settings
    store: MoveStore
    move: Move
    token: str
    owner: str
    _conns: list = field(default_factory=list)

    @property
    def org(self) -> int:
        return int(self.move.organization_id)

    @property
    def move_id(self) -> str:
        return str(self.move.id)

    @cached_property
    def topology(self):
        from migrator.topology.client import topology_client

        return topology_client(self.settings)

    @cached_property
    def dictionary(self):
        from migrator.dictionary import load_dictionary

        return load_dictionary(self.settings.dictionary_file())

    def cell_conn(self, cell: str, *, autocommit: bool = True):
        """A connection to a cell's database, closed when the step ends."""
        conn = connect(self.settings.cell(cell).dsn, what=f"cell {cell!r} database", autocommit=autocommit)
        stabilize_session(conn)
        self._conns.append(conn)
        return conn

    def source(self, autocommit: bool = True):
        return self.cell_conn(self.move.source_cell, autocommit=autocommit)

    def target(self, autocommit: bool = True):
        return self.cell_conn(self.move.target_cell, autocommit=autocommit)

    @cached_property
    def source_schema(self):
        from migrator.cells.introspect import introspect

        return introspect(self.source())

    @cached_property
    def target_schema(self):
        from migrator.cells.introspect import introspect

        return introspect(self.target())

    @cached_property
    def specs(self) -> dict[str, TableSpec]:
        return table_specs(self.dictionary, self.source_schema, self.settings.moves.checksum)

    def copy_order(self) -> list[str]:
        return self.dictionary.copy_order(self.source_schema)

    def heartbeat(self) -> None:
        self.store.heartbeat(self.move.id, self.token, self.owner, self.settings.moves.lease_ttl_s)

    def event(self, step: str | None, event: str, message: str = "", detail: dict | None = None) -> None:
        self.store.event(self.move.id, step, event, message, detail)

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._conns.clear()
