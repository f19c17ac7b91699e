"""Preflight's check that both cells can compute verify's row hash the same way (pure logic)."""

from __future__ import annotations

import pytest

from migrator.cells.introspect import ColumnInfo, LiveSchema, TableInfo
from migrator.errors import SchemaMismatch
from migrator.moves.steps.preflight import _check_row_hash


def _live(row_hash: bool, handle_hashable: bool) -> LiveSchema:
    cols = [ColumnInfo("id", "bigint", False, hashable=True),
            ColumnInfo("handle", "public.citext", True, hashable=handle_hashable)]
    return LiveSchema(tables={"users": TableInfo("users", cols, ["id"])}, row_hash=row_hash)


def test_same_hashability_passes():
    _check_row_hash(_live(True, False), _live(True, False), ["users"], "cell-1", "cell-2")
    _check_row_hash(_live(False, False), _live(False, False), ["users"], "cell-1", "cell-2")


def test_an_old_server_on_one_side_is_named_with_the_fix():
    with pytest.raises(SchemaMismatch) as exc:
        _check_row_hash(_live(True, False), _live(False, False), ["users"], "cell-1", "cell-2")
    assert "cell 'cell-2'" in exc.value.message and "PostgreSQL < 14" in exc.value.message
    assert "moves.checksum: text" in exc.value.hint


def test_a_column_hashable_on_one_side_only_is_named():
    with pytest.raises(SchemaMismatch) as exc:
        _check_row_hash(_live(True, True), _live(True, False), ["users"], "cell-1", "cell-2")
    assert "users.handle" in exc.value.message and "users.id" not in exc.value.message
