"""preflight: everything that must hold before an organization is frozen, and the move's plan.

Nothing here changes a cell. A failed check raises one MigratorError that names the problem and
what to do; the move is then rejected and the source stays exactly as it was.
"""

from __future__ import annotations

import logging
import time

from psycopg import sql

from migrator.blobs.store import open_store
from migrator.cells.introspect import introspect
from migrator.cells.names import qualified
from migrator.config import Settings
from migrator.copy.keys import colliding_keys
from migrator.copy.rows import count_rows
from migrator.copy.spec import org_scan, table_specs
from migrator.copy.unique import UniqueCheck, unique_conflicts
from migrator.dictionary.check import check_advice, check_key_sql, check_schema
from migrator.errors import (
    CellUnavailable,
    DictionaryError,
    KeyCollision,
    MigratorError,
    RouteFrozen,
    SameCell,
    SchemaMismatch,
    UniqueCollision,
    UnknownCell,
    UnknownOrganization,
)
from migrator.moves.calibration import try_load_calibration
from migrator.moves.estimate import estimate
from migrator.moves.steps.base import Step

log = logging.getLogger(__name__)
MAX_COLLISIONS_SHOWN = 5


def validate_request(settings: Settings, topology, org: int, target: str):
    """The checks an operator's request gets before a move is recorded. Returns the current route."""
    if target not in settings.cells:
        settings.cell(target)  # raises UnknownCell naming the configured cells
    try:
        cell = topology.get_cell(target)
    except UnknownCell:
        raise UnknownCell(f"cell {target!r} is configured but not registered in the Topology Service",
                          "run `migrator cells init` to provision and register it") from None
    if cell.state != "active":
        raise UnknownCell(f"target cell {target!r} is {cell.state}, not active",
                          "choose an active cell (see `migrator cells list`)")
    try:
        route = topology.classify(org)
    except UnknownOrganization:
        raise UnknownOrganization(f"organization {org} is not routed to any cell",
                                  "check the id with `migrator orgs list`") from None
    if route.cell == target:
        raise SameCell(f"organization {org} already lives in cell {target!r}",
                       "choose a different target cell")
    if route.cell not in settings.cells:
        raise UnknownCell(f"organization {org} lives in cell {route.cell!r}, which is not in the config",
                          "add that cell under 'cells:' in the config")
    return route


def _check_row_hash(live_src, live_tgt, tables, source: str, target: str) -> None:
    """verify hashes rows with the same expression on both sides: both servers must be able to."""
    if live_src.row_hash != live_tgt.row_hash:
        old = source if not live_src.row_hash else target
        raise SchemaMismatch(f"cell {old!r} runs PostgreSQL < 14, which has no hash_record_extended for verify's "
                             "row hash", "set `moves.checksum: text` in the config (docs/adr/0010-verify-row-hash.md)")
    if not live_src.row_hash:
        return
    differ = [f"{name}.{c.name}" for name in tables for c in live_src.tables[name].columns
              if (o := live_tgt.tables[name].column(c.name)) is not None and o.hashable != c.hashable]
    if differ:
        raise SchemaMismatch(f"cells {source!r} and {target!r} differ in which columns PostgreSQL can hash: "
                             f"{', '.join(differ[:10])}", "install the same extension versions in both cells, or "
                             "set `moves.checksum: text` (docs/adr/0010-verify-row-hash.md)")


def _check_privilege(conn, cell: str) -> None:
    ok = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    ok = bool(ok and ok[0])
    if not ok and conn.info.server_version >= 150000:
        ok = bool(conn.execute("SELECT has_parameter_privilege('session_replication_role', 'SET')").fetchone()[0])
    if not ok:
        raise MigratorError(
            f"the database user of cell {cell!r} may not SET session_replication_role",
            "GRANT SET ON PARAMETER session_replication_role TO <user> (PostgreSQL 15+), or use a superuser; "
            "see docs/adr/0004-copy-path.md",
        )


def find_collisions(src, tgt, spec, org: int, limit: int = MAX_COLLISIONS_SHOWN) -> list[tuple]:
    """Keys of the organization's rows that already exist in the target (streamed, never loaded)."""
    return colliding_keys(src, tgt, spec, org, limit)


def check_unique_keys(src, tgt, specs, rows_by_table: dict[str, int], org: int, target: str, *,
                      heartbeat=lambda: None) -> UniqueCheck:
    """Every unique constraint and unique index (other than the primary key) of every organization table
    that has rows, probed in the target with the organization's values (migrator.copy.unique). Raises
    one UniqueCollision naming every conflicting table, index and the first values; returns what was
    checked and what was skipped (with the reason), which the plan shows."""
    check = UniqueCheck()
    for name, rows in rows_by_table.items():
        if rows:
            heartbeat()
            unique_conflicts(src, tgt, specs[name], org, check, limit=MAX_COLLISIONS_SHOWN)
    for skip in check.skipped:
        log.warning("unique key check skipped %s.%s: %s", skip["table"], skip["index"], skip["reason"])
    if check.conflicts:
        shown = "; ".join(c.message for c in check.conflicts[:10])
        more = f" (and {len(check.conflicts) - 10} more)" if len(check.conflicts) > 10 else ""
        raise UniqueCollision(
            f"organization {org} holds unique values that other rows of cell {target!r} already hold: {shown}{more}",
            "the copy would fail on these unique keys; change the values on one side (or choose another "
            "target cell), then start the move again; nothing was changed",
            conflicts=[{"table": c.index.table, "index": c.index.name, "constraint": c.index.constraint,
                        "keys": list(c.index.keys), "predicate": c.index.predicate,
                        "values": [list(v) for v in c.values]} for c in check.conflicts],
        )
    return check


def run_preflight(settings: Settings, topology, dictionary, org: int, source: str, target: str,
                  *, connect_cell, heartbeat=lambda: None, strategy: str | None = None) -> dict:
    """All checks; returns the plan (tables and rows, blobs and bytes, the estimated duration and write
    window of ``strategy``, default ``moves.default_strategy``, calibrated from recent moves when the
    control database has them)."""

    started = time.monotonic()
    route = validate_request(settings, topology, org, target)
    if route.cell != source:
        raise MigratorError(f"organization {org} is routed to {route.cell!r}, not to the move's source {source!r}",
                            "abort this move and start a new one")
    if route.state == "frozen":
        raise RouteFrozen(f"organization {org} is frozen by another move (token sha256:{route.token_digest})",
                          "see `migrator status`; wait for that move or abort it")
    src = connect_cell(source)
    tgt = connect_cell(target)
    live_src, live_tgt = introspect(src), introspect(tgt)
    for cell, conn, live in ((source, src, live_src), (target, tgt, live_tgt)):
        problems = check_schema(dictionary, live) + check_key_sql(conn, dictionary, live)
        if problems:
            listing = "; ".join(p.message for p in problems[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise DictionaryError(f"cell {cell!r} does not match the data dictionary: {listing}{more}",
                                  f"run `migrator schema check --cell {cell}` and classify or fix each table")
    advice = [a.message for a in check_advice(dictionary, live_src)]
    for line in advice:
        log.warning("cell %r: %s", source, line)
    tables = dictionary.org_tables()
    if live_src.fingerprint(tables) != live_tgt.fingerprint(tables):
        diff = "; ".join(live_src.diff(live_tgt, tables, names=(source, target))[:10])
        raise SchemaMismatch(f"cells {source!r} and {target!r} have different schemas: {diff}",
                             "migrate both cells to the same schema version first")
    if settings.moves.checksum == "hash":
        _check_row_hash(live_src, live_tgt, tables, source, target)
    root = dictionary.root_table
    root_pk = live_src.tables[root].primary_key[0]
    exists = src.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} = %s)").format(
        qualified(root), sql.Identifier(root_pk)), (org,)).fetchone()[0]
    if not exists:
        raise UnknownOrganization(f"organization {org} has no row in {root!r} of cell {source!r}",
                                  "the route points at a cell that does not hold it; check `migrator orgs list`")
    _check_privilege(tgt, target)
    _check_privilege(src, source)
    for cell in (source, target):
        open_store(settings, cell).check()

    specs = table_specs(dictionary, live_src, settings.moves.checksum)
    rows_by_table: dict[str, int] = {}
    for name in dictionary.copy_order(live_src):
        spec = specs[name]
        heartbeat()
        rows_by_table[name] = count_rows(src, spec, org)
        if rows_by_table[name]:
            hits = find_collisions(src, tgt, spec, org)
            if hits:
                shown = ", ".join("(" + ", ".join(map(str, h)) + ")" for h in hits)
                raise KeyCollision(
                    f"{name}: primary keys of organization {org} already exist in cell {target!r}: {shown}",
                    "the target holds rows with these keys (a leftover copy of an earlier move? run "
                    "`migrator cleanup` for it); nothing was changed",
                )
    unique = check_unique_keys(src, tgt, specs, rows_by_table, org, target, heartbeat=heartbeat)
    blobs, blob_bytes = 0, 0
    for name in dictionary.blob_tables():
        entry = dictionary.tables[name]
        for blob in entry.blobs:
            size = sql.SQL("coalesce(sum({}), 0)").format(sql.Identifier("t", blob.size)) if blob.size \
                else sql.SQL("0")
            with org_scan(src, specs[name], org) as spec:
                n, b = src.execute(sql.SQL("SELECT count({key}), {size} FROM {table} AS t WHERE ({pred})").format(
                    key=blob.key_expr("t"), size=size, table=qualified(name),
                    pred=spec.predicate), {"org": org}).fetchone()
            blobs += int(n)
            blob_bytes += int(b)
    rows_total = sum(rows_by_table.values())
    # Rates per table from what recent moves measured (the control database), else the config's.
    calibration = try_load_calibration(settings)
    return {
        "organization_id": org,
        "source": source,
        "target": target,
        "route_version": route.version,
        "tables": rows_by_table,
        "rows_total": rows_total,
        "blobs": blobs,
        "blob_bytes": blob_bytes,
        # strategy, estimate_s, write_window_estimate_s, calibration (where the rates came from)
        **estimate(settings, strategy, rows_by_table, blob_bytes, calibration),
        "schema_fingerprint": live_src.fingerprint(tables),
        "preflight_s": round(time.monotonic() - started, 3),
        "advice": advice,  # sharding keys without an index: this move reads those tables whole
        "unique_checks": unique.as_dict(),  # unique indexes probed in the target; those skipped, and why
    }


def run(ctx) -> None:
    """The step: every check against the live cells; the plan is recorded on the move."""
    move = ctx.move
    plan = run_preflight(ctx.settings, ctx.topology, ctx.dictionary, ctx.org, move.source_cell, move.target_cell,
                         connect_cell=ctx.cell_conn, heartbeat=ctx.heartbeat, strategy=move.strategy)
    ctx.store.set_fields(move.id, ctx.token, plan=plan, route_version=plan["route_version"])


STEP = Step("preflight", run=run, summary="every check before anything changes; the move's plan")

__all__ = ["run_preflight", "validate_request", "find_collisions", "CellUnavailable", "STEP"]
