"""verify: per key range, row count plus an order-independent checksum, on both sides.

The checksum is computed inside PostgreSQL (the sum of a 64-bit prefix of each row's md5, over the
row's text form in a session with fixed output settings), so no row crosses the network to be
compared. A mismatched range is named (table and key bounds) and re-copied once by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from migrator.copy.spec import TableSpec


@dataclass(frozen=True)
class RangeChecksum:
    rows: int
    checksum: str

    def as_dict(self) -> dict:
        return {"rows": self.rows, "checksum": self.checksum}


def range_checksum(conn, spec: TableSpec, org: int, lo: list | None, hi: list | None) -> RangeChecksum:
    rows, checksum = conn.execute(spec.checksum_sql(lo, hi), {"org": org}).fetchone()
    return RangeChecksum(int(rows), str(checksum))


def describe_range(table: str, lo: list | None, hi: list | None) -> str:
    left = "(" + ", ".join(map(str, lo)) + ")" if lo is not None else "-inf"
    right = "(" + ", ".join(map(str, hi)) + ")" if hi is not None else "+inf"
    return f"{table} keys ({left} .. {right}]"
