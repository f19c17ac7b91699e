"""What a step needs while it runs: settings, the move, its cells, dictionary and Topology Service."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from migrator.cells import connections
from migrator.cells.introspect import introspect
from migrator.config import Settings
from migrator.control.models import Move
from migrator.copy.spec import TableSpec, table_specs
from migrator.dictionary import load_dictionary
from migrator.moves.store import MoveStore


@dataclass
class MoveContext:
    settings: Settings
    store: MoveStore
    move: Move
    token: str
    owner: str
    lease_ttl_s: float | None = None  # this execution's lease (short inside the write window)
    pacer: object | None = None  # migrator.moves.throttle.Pacer of this execution (health signals)
    _conns: list = field(default_factory=list)

    @property
    def org(self) -> int:
        return int(self.move.organization_id)

    @property
    def move_id(self) -> str:
        return str(self.move.id)

    @cached_property
    def topology(self):
        # deferred: the gRPC client is slow to import and only this path needs it
        from migrator.topology.client import topology_client

        return topology_client(self.settings, shared=True)

    @cached_property
    def dictionary(self):
        return _cached_dictionary(self.settings.dictionary_file())

    def cell_conn(self, cell: str, *, autocommit: bool = True):
        """A connection to a cell's database (stable session settings), given back when the step ends.

        Taken from this worker process's idle connections when one answers (migrator/cells/connections.py).
        """
        dsn = self.settings.cell(cell).dsn
        conn = connections.checkout(dsn, what=f"cell {cell!r} database", autocommit=autocommit)
        self._conns.append((conn, dsn, autocommit))
        return conn

    def source(self, autocommit: bool = True):
        return self.cell_conn(self.move.source_cell, autocommit=autocommit)

    def target(self, autocommit: bool = True):
        return self.cell_conn(self.move.target_cell, autocommit=autocommit)

    @cached_property
    def source_schema(self):
        return self._schema(self.move.source_cell)

    @cached_property
    def target_schema(self):
        return self._schema(self.move.target_cell)

    def _schema(self, cell: str):
        """The cell's live schema, read once per move attempt in this worker process.

        Preflight checked that both cells have the same schema; a resume is a new attempt (a new
        token) and reads it again, so a schema migrated while a move was paused is seen.
        """

        key = (os.getpid(), str(self.move.id), self.token, self.settings.cell(cell).dsn)
        with _schemas_lock:
            live = _schemas.get(key)
        if live is None:
            live = introspect(self.cell_conn(cell))
            with _schemas_lock:
                _schemas[key] = live
                while len(_schemas) > _SCHEMAS_KEPT:
                    _schemas.popitem(last=False)
        return live

    @cached_property
    def specs(self) -> dict[str, TableSpec]:
        return table_specs(self.dictionary, self.source_schema, self.settings.moves.checksum)

    def copy_order(self) -> list[str]:
        return self.dictionary.copy_order(self.source_schema)

    @property
    def ttl_s(self) -> float:
        return self.lease_ttl_s or self.settings.moves.lease_ttl_s

    def heartbeat(self) -> None:
        self.store.heartbeat(self.move.id, self.token, self.owner, self.ttl_s)

    def event(self, step: str | None, event: str, message: str = "", detail: dict | None = None) -> None:
        self.store.event(self.move.id, step, event, message, detail)

    def close(self) -> None:
        for conn, dsn, autocommit in self._conns:
            connections.checkin(conn, dsn, autocommit=autocommit)
        self._conns.clear()


# Live schemas of recent move attempts, per worker process (see MoveContext._schema).
_SCHEMAS_KEPT = 64
_schemas: OrderedDict = OrderedDict()
_schemas_lock = threading.Lock()


def _cached_dictionary(path):
    """The data dictionary, read again only when its file changes (size or modification time)."""
    try:
        stat = Path(path).stat()
    except OSError:

        return load_dictionary(path)  # raises the error that names the file
    return _load_dictionary(str(path), stat.st_mtime_ns, stat.st_size, os.getpid())


@lru_cache(maxsize=8)
def _load_dictionary(path: str, mtime_ns: int, size: int, pid: int):

    return load_dictionary(path)
