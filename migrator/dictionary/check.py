"""Hold the data dictionary against a cell's live schema: every disagreement is a :class:`Problem`.

A move is only safe when every table in the cell is classified (an unclassified table's rows would
silently stay behind), every column the dictionary names exists, every sharding key leads to the
root and every organization-scoped table has a primary key (the copier pages and upserts by it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from migrator.blobs import digest as dg
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
BLOB_CHECKSUM = "blob_checksum"
KEY_SQL = "key_sql"
UNINDEXED_KEY = "unindexed_sharding_key"  # advice, not a problem: moves work, at the table's cost

PROBLEM_KINDS = (UNCLASSIFIED, MISSING_TABLE, MISSING_COLUMN, BROKEN_CHAIN, NO_PRIMARY_KEY, ROOT_KEY_TYPE,
                 UNRESOLVED_KEY, REFERENCES_ORG_DATA, BLOB_CHECKSUM, KEY_SQL)
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
            if spec.checksum and info.has_column(spec.checksum):
                problem = checksum_problem(name, spec, info.column(spec.checksum).type, source)
                if problem is not None:
                    add(problem)

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


def checksum_problem(table: str, spec, column_type: str, source: str = "the dictionary") -> Problem | None:
    """Why the copier could not compare the checksum column of ``spec`` (of ``column_type``), or None.

    Decidable from the column's type alone: a type that holds no digest (an integer, a uuid), a declared
    encoding the type cannot hold (hex or base64 in ``bytea``, raw bytes in text), text too short for
    the algorithm's digest. A ``bytea`` of the wrong length is only found in the data (the copy names
    the row)."""
    column, algorithm = spec.checksum, spec.algorithm
    where = f"blob checksum column {table}.{column}"
    allowed = dg.encodings_for_type(column_type)
    if not allowed:
        return Problem(
            BLOB_CHECKSUM, table, column,
            f"{where} is {column_type}: a checksum is compared as raw bytes (bytea) or text (hex, base64), "
            "so the copier could not compare it",
            f"name the column holding the {algorithm} digest in the blobs of {table} in {source}, or leave checksum "
            "out (each object is then hashed on both sides)",
        )
    if spec.encoding is not None and spec.encoding not in allowed:
        fits = " or ".join(f"encoding: {e}" for e in allowed)
        return Problem(
            BLOB_CHECKSUM, table, column,
            f"{where} is {column_type}, but the dictionary declares encoding: {spec.encoding} "
            f"({'a bytea column holds raw bytes' if allowed == (dg.RAW,) else 'a text column holds text'})",
            f"declare {fits} for {table}.{column} in {source} (or leave encoding out: {column_type} means "
            f"{allowed[0]})",
        )
    encoding = spec.encoding or allowed[0]
    limit = dg.text_limit(column_type)
    need = dg.encoded_length(algorithm, encoding)
    if limit is not None and limit < need:
        fits = [a for a in dg.ALGORITHMS if dg.encoded_length(a, encoding) <= limit]
        return Problem(
            BLOB_CHECKSUM, table, column,
            f"{where} is {column_type}: at most {limit} characters, but a {algorithm} digest in {encoding} takes "
            f"{need}",
            f"declare the algorithm the application writes in the blobs of {table} in {source}"
            + (f" ({' or '.join('algorithm: ' + a for a in fits)})" if fits else "")
            + "; the copier would refuse every row's checksum otherwise",
        )
    return None


# Types an object key may have: text, character varying, character.
TEXT_OIDS = (25, 1043, 1042)


def check_key_sql(conn, dictionary: Dictionary, live: LiveSchema) -> list[Problem]:
    """Every computed blob key (``key_sql``) evaluated on the live schema, reading no row: ``SELECT
    (key_sql) FROM table AS t LIMIT 0`` in a transaction rolled back. Unknown columns, wrong types,
    syntax errors and a result that is not text are problems naming the table and the blob."""
    from psycopg import sql

    from migrator.cells.names import qualified

    problems: list[Problem] = []
    source = dictionary.source or "the dictionary"
    for name in dictionary.blob_tables():
        if name not in live.tables:
            continue  # reported by check_schema
        for spec in dictionary.tables[name].blobs:
            if spec.key_sql is None:
                continue
            where = f"computed key (key_sql) of blob {spec.label} of {name}"
            table = qualified(name)
            query = sql.SQL("SELECT {} FROM {} AS t LIMIT 0").format(spec.key_expr("t"), table)
            try:
                with conn.transaction(force_rollback=True):
                    cur = conn.execute(query, {})
                    type_oid = cur.description[0].type_code
            except Exception as exc:  # noqa: BLE001 - any database error is the expression's problem
                message = str(getattr(getattr(exc, "diag", None), "message_primary", None) or exc).splitlines()[0]
                problems.append(Problem(
                    KEY_SQL, name, None,
                    f"{where} does not evaluate on the live schema: {message}",
                    f"fix key_sql of {name} in {source}: one SQL expression over {name}'s columns giving the "
                    "object key as text (docs/dictionary.md, Computed keys)",
                ))
                continue
            if type_oid not in TEXT_OIDS:
                type_name = conn.execute("SELECT format_type(%s, NULL)", (type_oid,)).fetchone()[0]
                problems.append(Problem(
                    KEY_SQL, name, None,
                    f"{where} gives {type_name}, not text: object keys are text",
                    f"end key_sql of {name} in {source} with ::text (or build the key with || and format())",
                ))
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
