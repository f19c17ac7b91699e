"""Cell databases: what they contain (introspect), the freeze guard (guard), provisioning and adoption
(provision, sequences), the organizations living in them (discover) and removing the migrator (uninstall)."""

from __future__ import annotations

from migrator.cells.introspect import ColumnInfo, ForeignKeyInfo, LiveSchema, TableInfo, introspect

__all__ = ["ColumnInfo", "ForeignKeyInfo", "LiveSchema", "TableInfo", "introspect"]
