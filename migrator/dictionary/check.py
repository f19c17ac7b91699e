"""Hold the data dictionary against a cell's live schema: every disagreement is a :class:`Problem`.

A move is only safe when every table in the cell is classified (an unclassified table's rows would
silently stay behind), every column the dictionary names exists, every sharding key leads to the
root and every organization-scoped table has a primary key (the copier pages and upserts by it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from migrator.dictionary.model import Dictionary
from migrator.errors import DictionaryError

if TYPE_CHECKING:  # pragma: no cover - typing only: the dictionary does not depend on the cells
    from migrator.cells.introspect import LiveSchema

UNCLASSIFIED = "unclassified"
MISSING_TABLE = "missing_table"
MISSING_COLUMN = "missing_column"
BROKEN_CHAIN = "broken_chain"
NO_PRIMARY_KEY = "no_primary_key"
UNRESOLVED_KEY = "unresolved_key"
REFERENCES_ORG_DATA = "references_org_data"
ROOT_KEY_TYPE = "root_key_type"
UNINDEXED_KEY = "unindexed_sharding_key"  # advice, not a problem: moves work, at the table's cost

PROBLEM_KINDS = (UNCLASSIFIED, MISSING_TABLE, MISSING_COLUMN, BROKEN_CHAIN, NO_PRIMARY_KEY, ROOT_KEY_TYPE,
                 UNRESOLVED_KEY, REFERENCES_ORG_DATA)
# Organization ids are 64-bit integers in the Topology Service, the freeze guard and move records.
INTEGER_TYPES = ("smallint", "integer", "bigint")


@dataclass(frozen=True)
class Problem:
    kind: str
    table: str
    column: str | None
    message: str
    hint: str

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})"


def check_schema(dictionary: Dictionary, live: LiveSchema) -> list[Problem]:
    """Every problem between ``dictionary`` and ``live``, sorted by table, kind and column."""
    problems: list[Problem] = []
    add = problems.append
    source = dictionary.source or "the dictionary"

    for name in sorted(set(live.tables) - set(dictionary.tables)):
        add(Problem(
            UNCLASSIFIED, name, None,
            f"table {name} is in the database but not in the data dictionary: a move would leave its rows behind",
            f"add {name} to {source}: organization-scoped with a sharding_key (column: parent_table) leading to "
            f"{dictionary.root_table}, or classification: cell_local / cluster_wide",
        ))

    for name, entry in dictionary.tables.items():
        info = live.tables.get(name)
        if info is None and name in live.partitions:
            parent = live.partitions[name]
            add(Problem(
                MISSING_TABLE, name, None,
                f"table {name} of the data dictionary is a partition of {parent}: partitions (in any schema) are "
                f"copied, guarded and verified through their partitioned table",
                f"remove {name} from {source} and classify {parent} instead",
            ))
            continue
        if info is None and name.startswith("public.") and name.removeprefix("public.") in live.tables:
            add(Problem(
                MISSING_TABLE, name, None,
                f"table {name} of the data dictionary is named {name.removeprefix('public.')} (tables of schema "
                "public are named bare, those of other schemas schema.table)",
                f"rename the entry (and sharding keys leading to it) to {name.removeprefix('public.')} in {source}",
            ))
            continue
        if info is None:
            add(Problem(
                MISSING_TABLE, name, None,
                f"table {name} is in the data dictionary ({entry.classification}) but not in the database",
                f"create it (run the application's migrations on this cell) or remove it from {source}",
            ))
            continue
        if not entry.organization_scoped:
            for fk in info.foreign_keys:
                target = dictionary.tables.get(fk.ref_table)
                if target is not None and target.organization_scoped:
                    add(Problem(
                        REFERENCES_ORG_DATA, name, ", ".join(fk.columns),
                        f"{entry.classification} table {name} has a foreign key ({', '.join(fk.columns)}) into "
                        f"organization-scoped table {fk.ref_table}: moving an organization would break it",
                        f"drop the foreign key, or classify {name} as organization-scoped with a sharding_key",
                    ))
            continue
        if not info.primary_key:
            add(Problem(
                NO_PRIMARY_KEY, name, None,
                f"organization-scoped table {name} has no primary key: it cannot be copied in batches or upserted",
                f"add a primary key to {name}",
            ))
        for column, parent in entry.sharding_key.items():
            if not info.has_column(column):
                add(Problem(
                    MISSING_COLUMN, name, column,
                    f"sharding key column {name}.{column} (-> {parent}) does not exist in the database",
                    f"fix the sharding_key of {name} in {source}, or add the column",
                ))
                continue
            if parent in live.tables and dictionary.tables.get(parent) is not None:
                try:
                    dictionary.parent_key(name, column, parent, live)
                except DictionaryError as exc:
                    add(Problem(UNRESOLVED_KEY, name, column, exc.message, exc.hint or ""))
        for spec in entry.blobs:
            for role, column in (("key", spec.key), ("checksum", spec.checksum), ("size", spec.size)):
                if column and not info.has_column(column):
                    add(Problem(
                        MISSING_COLUMN, name, column,
                        f"blob {role} column {name}.{column} does not exist in the database",
                        f"fix the blobs of {name} in {source}, or add the column",
                    ))

    for chain in dictionary.chain_problems():
        add(Problem(
            BROKEN_CHAIN, chain.table, chain.column,
            f"sharding key {chain.table}.{chain.column} does not lead to the root {dictionary.root_table}: "
            f"{chain.message}",
            f"make every sharding key of {chain.table} name an organization-scoped parent on a path to "
            f"{dictionary.root_table} in {source}",
        ))

    if dictionary.root_table in live.tables:
        root = live.tables[dictionary.root_table]
        pk = root.primary_key
        key = root.column(pk[0]) if len(pk) == 1 else None
        if key is not None and key.type not in INTEGER_TYPES:
            add(Problem(
                ROOT_KEY_TYPE, dictionary.root_table, key.name,
                f"root table {dictionary.root_table}'s primary key {key.name} is {key.type}: organization ids "
                "must be integers (smallint, integer or bigint)",
                "the Topology Service routes organizations by a 64-bit integer id; name a root table whose "
                f"primary key is an integer in {source}",
            ))
        if len(pk) > 1:
            add(Problem(
                NO_PRIMARY_KEY, dictionary.root_table, None,
                f"root table {dictionary.root_table} has a composite primary key ({', '.join(pk)}); "
                "its single-column primary key must be the organization id",
                f"give {dictionary.root_table} a single-column primary key",
            ))

    order = {kind: i for i, kind in enumerate(PROBLEM_KINDS)}
    problems.sort(key=lambda p: (p.table, order.get(p.kind, 99), p.column or ""))
    return problems


def check_advice(dictionary: Dictionary, live: LiveSchema) -> list[Problem]:
    """What makes moves slower than they need be, without making them wrong: sharding-key columns that
    lead no index. An organization's rows of such a table (and of every table whose sharding keys
    lead through it) can only be found by reading the whole table, so each move out of the cell
    costs the table's size, not the organization's (ADR 0017)."""
    advice: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for name in dictionary.org_tables():
        if name not in live.tables:
            continue
        try:
            missing = dictionary.unindexed_keys(name, live)
        except DictionaryError:
            continue  # a broken chain is reported by check_schema
        for table, column in missing:
            if (table, column) in seen:
                continue
            seen.add((table, column))
            advice.append(Problem(
                UNINDEXED_KEY, table, column,
                f"sharding key {table}.{column} leads no index: every move reads all of {table} (and of each "
                "table whose sharding key leads through it) to find one organization's rows",
                f"CREATE INDEX CONCURRENTLY ON {table} ({column}); moves work without it, at the table's cost",
            ))
    return advice
