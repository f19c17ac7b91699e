"""cells-migrator: move an organization between Cells, one idempotent step at a time."""

__version__ = "0.1.0"
