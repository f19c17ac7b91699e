"""The invariants every fault scenario checks after its move. Each returns violations (strings)."""

from __future__ import annotations

import psycopg

from migrator.blobs.store import open_store
from migrator.cells.introspect import introspect
from migrator.copy.spec import table_specs
from migrator.dictionary import load_dictionary
from migrator.moves.store import MoveStore
from migrator.topology.client import topology_client
from tests.support.checks import duplicate_keys, leftover_keys, org_checksums


def snapshot(settings, org_cells: list[tuple[int, str]]) -> dict:
    return {(org, cell): org_checksums(settings, cell, org) for org, cell in org_cells}


def check_completed(settings, move_id, org: int, source: str, target: str, *, before: dict | None,
                    bystanders: dict | None = None, writers: bool = False) -> list[str]:
    """A completed move: rows and checksums equal, nothing doubled, blobs there, one flip."""
    v: list[str] = []
    move = MoveStore(settings.control_dsn).get(move_id)
    if move.state != "completed":
        return [f"move {move_id} is {move.state}: {move.error}"]
    ver = (move.report or {}).get("verification") or {}
    if not ver.get("ok"):
        v.append(f"verification report not ok: {ver}")
    if not writers:
        tgt = org_checksums(settings, target, org)
        src = org_checksums(settings, source, org)
        if tgt != src:
            v.append(f"target differs from source: {diff(src, tgt)}")
        if before is not None and src != before:
            v.append(f"source changed during the move: {diff(before, src)}")
    dups = duplicate_keys(settings, target)
    if dups:
        v.append(f"duplicated keys in target: {dups}")
    v += blob_violations(settings, target, org)
    topo = topology_client(settings)
    route = topo.classify(org)
    if route.cell != target or route.state != "active":
        v.append(f"route is {route.cell}/{route.state}, expected {target}/active")
    flips = [h for h in topo.history(org) if h["action"] == "flip"]
    mine = [h for h in flips if h["from_cell"] == source and h["to_cell"] == target]
    if len(mine) != 1:
        v.append(f"route history shows {len(mine)} flips {source}->{target}")
    v += bystander_violations(settings, bystanders)
    return v


def check_not_moved(settings, org: int, source: str, target: str, before: dict,
                    bystanders: dict | None = None) -> list[str]:
    """An aborted (or refused) move: source unchanged and writable, target without the rows."""
    v = []
    if org_checksums(settings, source, org) != before:
        v.append("source changed")
    left = leftover_keys(settings, source, target, org)
    if left:
        v.append(f"target still holds the organization's keys: {left}")
    route = topology_client(settings).classify(org)
    if route.cell != source or route.state != "active":
        v.append(f"route is {route.cell}/{route.state}, expected {source}/active")
    with psycopg.connect(settings.cell(source).dsn, autocommit=True) as conn:
        try:
            conn.execute("UPDATE organizations SET name = name WHERE id = %s", (org,))
        except psycopg.Error as exc:
            v.append(f"source not writable: {exc}")
    v += bystander_violations(settings, bystanders)
    return v


def bystander_violations(settings, bystanders: dict | None) -> list[str]:
    v = []
    for (org, cell), before in (bystanders or {}).items():
        now = org_checksums(settings, cell, org)
        if now != before:
            v.append(f"bystander organization {org} in {cell} changed: {diff(before, now)}")
    return v


def blob_violations(settings, cell: str, org: int) -> list[str]:
    dictionary = load_dictionary(settings.dictionary_file())
    store = open_store(settings, cell)
    v = []
    with psycopg.connect(settings.cell(cell).dsn, autocommit=True) as conn:
        specs = table_specs(dictionary, introspect(conn))
        from migrator.blobs.copier import blob_units, iter_refs

        for table, blob in blob_units(dictionary):
            for refs in iter_refs(conn, specs[table], blob, org, after=None, hi=None, batch=500):
                for ref in refs:
                    if store.stat(ref.key) is None:
                        v.append(f"blob {ref.key} missing in {cell}")
                    elif ref.checksum and store.digest(ref.key, ref.algorithm).hex != ref.checksum:
                        v.append(f"blob {ref.key} corrupt in {cell}")
    return v


def diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
