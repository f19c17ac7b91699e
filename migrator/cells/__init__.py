"""Cell databases: what they contain (introspect), the freeze guard (guard) and provisioning (provision)."""

from __future__ import annotations

from migrator.cells.introspect import ColumnInfo, ForeignKeyInfo, LiveSchema, TableInfo, introspect

__all__ = ["ColumnInfo", "ForeignKeyInfo", "LiveSchema", "TableInfo", "introspect"]
