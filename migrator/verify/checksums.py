"""verify: per key range, row count plus an order-independent checksum, on both sides.

The checksum is computed inside PostgreSQL (the sum of a 64-bit hash of each row, ADR 0010), so no
row crosses the network to be compared. A mismatched range is named (table and key bounds) and
re-copied once by the caller.

The two sides are different databases (usually different servers), so :func:`range_checksums`
runs them at the same time, one connection each: a range costs the slower side, not the sum.

While one side is still written to (the source before the freeze, the target after the flip), the
keys its change log shows in flux are left out on both sides (``in_flux``): they are read in the
same REPEATABLE READ snapshot as that side's rows, so a change is either in both or in neither
(docs/adr/0012-the-write-window.md). :func:`keys_checksums` compares a set of keys by key, and
:func:`org_counts` the organization's rows per table.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from migrator.copy.rows import count_rows
from migrator.copy.spec import COUNT_INDEX_MAX_FRACTION, TableSpec, choose_path, org_rows, org_scan


@dataclass(frozen=True)
class RangeChecksum:
    rows: int
    checksum: str

    def as_dict(self) -> dict:
        return {"rows": self.rows, "checksum": self.checksum}


def range_checksum(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None, *,
                   rows: float | None = None, excluded: list | None = None) -> RangeChecksum:
    """Count and checksum of the organization's rows in (lo, hi], by the plan its share of the table
    calls for (``spec.org_scan``). ``rows``: the organization's rows in the table, when this cell's
    statistics may not know them (a target that has not analyzed the rows just copied into it).
    ``excluded``: keys (JSON arrays) left out."""
    params = {"org": org}
    if excluded is not None:
        params["excluded"] = json.dumps(excluded)
    with org_scan(conn, spec, org, path=choose_path(conn, spec, org, rows)) as s:
        count, checksum = conn.execute(s.checksum_sql(lo, hi, excluding="excluded" if excluded is not None
                                                      else None), params).fetchone()
    return RangeChecksum(int(count), str(checksum))


def _both(source_side: Callable, target_side: Callable) -> tuple:
    """Run the target side in a thread while the source side runs here; both results, or the first error
    once both have finished (neither connection is left mid-query). Each connection stays in one thread."""
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["target"] = target_side()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out["target"] = exc

    thread = threading.Thread(target=target, name="verify-target", daemon=True)
    thread.start()
    try:
        source = source_side()
    finally:
        thread.join()
    if isinstance(out["target"], BaseException):
        raise out["target"]
    return source, out["target"]


def range_checksums(src, tgt, spec: TableSpec, org: int, lo: list | None, hi: list | None, *,
                    in_flux: Callable | None = None, flux_side: str = "source"
                    ) -> tuple[RangeChecksum, RangeChecksum]:
    """(source, target) checksums of a range, both queries running at once (the target's in a thread).

    The target's plan is chosen with the source's estimate of the organization's rows: the target
    has usually not analyzed them yet. ``in_flux(conn)``: the keys of this table in flux on the side
    still written to (``flux_side``), read in the REPEATABLE READ transaction that also reads that
    side's rows; they are left out on both sides.
    """
    rows = org_rows(src, spec, org)
    if in_flux is None:
        return _both(lambda: range_checksum(src, spec, org, lo, hi, rows=rows),
                     lambda: range_checksum(tgt, spec, org, lo, hi, rows=rows))
    live, other = (src, tgt) if flux_side == "source" else (tgt, src)
    with live.transaction():
        live.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        keys = in_flux(live)
        live_sum, other_sum = _both(lambda: range_checksum(live, spec, org, lo, hi, rows=rows, excluded=keys),
                                    lambda: range_checksum(other, spec, org, lo, hi, rows=rows, excluded=keys))
    return (live_sum, other_sum) if flux_side == "source" else (other_sum, live_sum)


def keys_checksum(conn, spec: TableSpec, org: int, keys: list) -> RangeChecksum:
    """Count and checksum of the organization's rows among ``keys`` (JSON arrays), found by key."""
    count, checksum = conn.execute(spec.keys_checksum_sql("keys"), {"org": org, "keys": json.dumps(keys)}).fetchone()
    return RangeChecksum(int(count), str(checksum))


def keys_checksums(src, tgt, spec: TableSpec, org: int, keys: list) -> tuple[RangeChecksum, RangeChecksum]:
    return _both(lambda: keys_checksum(src, spec, org, keys), lambda: keys_checksum(tgt, spec, org, keys))


def org_count(conn, spec: TableSpec, org: int, rows: float | None = None) -> int:
    """The organization's rows in the table (by the plan its share calls for)."""
    return count_rows(conn, spec, org, path=choose_path(conn, spec, org, rows, max_fraction=COUNT_INDEX_MAX_FRACTION))


def org_counts(src, tgt, spec: TableSpec, org: int) -> tuple[int, int]:
    rows = org_rows(src, spec, org)
    return _both(lambda: org_count(src, spec, org, rows), lambda: org_count(tgt, spec, org, rows))


def describe_range(table: str, lo: list | None, hi: list | None) -> str:
    left = "(" + ", ".join(map(str, lo)) + ")" if lo is not None else "-inf"
    right = "(" + ", ".join(map(str, hi)) + ")" if hi is not None else "+inf"
    return f"{table} keys ({left} .. {right}]"
