"""The data dictionary: how every table's rows belong (or not) to an organization.

Format: docs/dictionary.md. ``load_dictionary(path)`` reads and validates a file;
``check_schema(dictionary, live)`` holds it against a cell's live schema.
"""

from __future__ import annotations

from migrator.dictionary.model import (
    CELL_LOCAL,
    CLASSIFICATIONS,
    CLUSTER_WIDE,
    ORGANIZATION,
    BlobSpec,
    ChainProblem,
    Dictionary,
    TableEntry,
    load_dictionary,
)

__all__ = [
    "CELL_LOCAL",
    "CLASSIFICATIONS",
    "CLUSTER_WIDE",
    "ORGANIZATION",
    "BlobSpec",
    "ChainProblem",
    "Dictionary",
    "TableEntry",
    "load_dictionary",
]
