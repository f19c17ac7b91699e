"""verify: per key range, row count plus an order-independent checksum, on both sides.

The checksum is computed inside PostgreSQL (the sum of a 64-bit prefix of each row's md5, over the
row's text form in a session with fixed output settings), so no row crosses the network to be
compared. A mismatched range is named (table and key bounds) and re-copied once by the caller.

The two sides are different databases (usually different servers), so :func:`range_checksums`
runs them at the same time, one connection each: a range costs the slower side, not the sum.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from migrator.copy.spec import TableSpec, choose_path, org_rows, org_scan


@dataclass(frozen=True)
class RangeChecksum:
    rows: int
    checksum: str

    def as_dict(self) -> dict:
        return {"rows": self.rows, "checksum": self.checksum}


def range_checksum(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None, *,
                   rows: float | None = None) -> RangeChecksum:
    """Count and checksum of the organization's rows in (lo, hi], by the plan its share of the table
    calls for (``spec.org_scan``). ``rows``: the organization's rows in the table, when this cell's
    statistics may not know them (a target that has not analyzed the rows just copied into it)."""
    with org_scan(conn, spec, org, path=choose_path(conn, spec, org, rows)) as s:
        count, checksum = conn.execute(s.checksum_sql(lo, hi), {"org": org}).fetchone()
    return RangeChecksum(int(count), str(checksum))


def range_checksums(src, tgt, spec: TableSpec, org: int, lo: list | None, hi: list | None
                    ) -> tuple[RangeChecksum, RangeChecksum]:
    """(source, target) checksums of a range, both queries running at once (the target's in a thread).

    The target's plan is chosen with the source's estimate of the organization's rows: the target
    has usually not analyzed them yet. Each connection is used by one thread only. An error on
    either side is raised here, after both queries have finished (so neither connection is left
    mid-query).
    """
    out: dict[str, RangeChecksum | BaseException] = {}
    rows = org_rows(src, spec, org)

    def target_side() -> None:
        try:
            out["target"] = range_checksum(tgt, spec, org, lo, hi, rows=rows)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out["target"] = exc

    thread = threading.Thread(target=target_side, name="verify-target", daemon=True)
    thread.start()
    try:
        source = range_checksum(src, spec, org, lo, hi, rows=rows)
    finally:
        thread.join()
    target = out["target"]
    if isinstance(target, BaseException):
        raise target
    return source, target


def describe_range(table: str, lo: list | None, hi: list | None) -> str:
    left = "(" + ", ".join(map(str, lo)) + ")" if lo is not None else "-inf"
    right = "(" + ", ".join(map(str, hi)) + ")" if hi is not None else "+inf"
    return f"{table} keys ({left} .. {right}]"
