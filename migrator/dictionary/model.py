"""The data dictionary: one entry per table saying how its rows belong to an organization.

The dictionary is a YAML file (format in docs/dictionary.md). Every organization-scoped table
declares a *sharding key* ``column: parent_table``; following those keys from any table must reach
the *root* table, whose primary key is the organization id. Tables that hold no organization's
data are ``cell_local`` (per-cell state) or ``cluster_wide`` (shared by all cells).

From the dictionary and a live schema (:class:`migrator.cells.introspect.LiveSchema`) this module
derives the SQL the mover needs: which rows of a table belong to an organization
(:meth:`Dictionary.org_predicate`), which organization a row belongs to
(:meth:`Dictionary.org_of_row_sql`, used by the freeze guard) and in which order to copy tables
(:meth:`Dictionary.copy_order`). Every identifier goes through :mod:`psycopg.sql`.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from psycopg import sql

from migrator.blobs.digest import ALGORITHMS, ENCODINGS, SHA256
from migrator.cells.names import qualified
from migrator.errors import DictionaryError

if TYPE_CHECKING:  # pragma: no cover - typing only (cells.introspect does not import us)
    from migrator.cells.introspect import LiveSchema

ORGANIZATION = "organization"
CELL_LOCAL = "cell_local"
CLUSTER_WIDE = "cluster_wide"
CLASSIFICATIONS = (ORGANIZATION, CELL_LOCAL, CLUSTER_WIDE)

SUPPORTED_VERSIONS = (1,)
_TOP_KEYS = {"version", "root", "tables", "description"}
_TABLE_KEYS = {"root", "sharding_key", "classification", "blobs", "description", "owner"}
_BLOB_KEYS = {"key", "key_sql", "name", "checksum", "algorithm", "encoding", "size"}
_ROWVAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

ORG_PLACEHOLDER = sql.Placeholder("org")

FORMAT_HINT = "see docs/dictionary.md for the dictionary format"

# One hop of an organization predicate: ``alias.column`` among the parent's keys of the organization.
_IN_SUBQUERY = "{}.{} IN (SELECT {}.{} FROM {} AS {} WHERE {})"  # a semi-join the planner may flatten
_ANY_ARRAY = "{}.{} = ANY(ARRAY(SELECT {}.{} FROM {} AS {} WHERE {}))"  # keys resolved once (an InitPlan)


@dataclass(frozen=True)
class BlobSpec:
    """How a row names an object in the cell's blob store.

    ``key`` is the column holding the object key (NULL in a row: no blob), or ``key_sql`` an SQL
    expression over the row's columns computing it (operator-authored, spliced as SQL; ``schema check``
    evaluates it on the live schema); ``name`` names a computed key's unit (default ``key_sql``).
    ``checksum`` is the column holding the object's digest (optional: without it the object is hashed
    on both sides), computed with ``algorithm`` (sha256, sha1, md5) and held in ``encoding`` (hex, raw,
    base64; None: from the column's type, ``bytea`` raw, text hex). ``size`` its size in bytes (optional).
    """

    key: str | None
    checksum: str | None = None
    size: str | None = None
    algorithm: str = SHA256
    encoding: str | None = None
    key_sql: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """The blob's name in unit names and messages: its key column, or the computed key's name."""
        return self.key or self.name or "key_sql"

    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.key, self.checksum, self.size) if c)

    def key_expr(self, alias: str = "t") -> sql.Composable:
        """The object key of a row of ``alias``: its key column, or the computed key (``key_sql``, spliced
        as SQL: the dictionary is operator-authored; its columns resolve to the one table in scope)."""
        if self.key_sql is not None:
            return sql.SQL("({})").format(sql.SQL(self.key_sql))
        return sql.Identifier(alias, self.key)


@dataclass(frozen=True)
class TableEntry:
    name: str
    classification: str
    sharding_key: dict[str, str] = field(default_factory=dict, hash=False)
    root: bool = False
    blobs: tuple[BlobSpec, ...] = ()
    description: str | None = None
    owner: str | None = None

    @property
    def organization_scoped(self) -> bool:
        return self.classification == ORGANIZATION


@dataclass(frozen=True)
class ChainProblem:
    """A sharding key that does not lead to the root (unknown parent, not organization data, cycle)."""

    table: str
    column: str
    message: str


Hop = tuple[str, str, str]  # (table, column, parent)


class Dictionary:
    """A validated data dictionary. Build one with :func:`load_dictionary` or :meth:`from_mapping`."""

    def __init__(self, root_table: str, tables: dict[str, TableEntry], *, version: int = 1,
                 source: str | None = None, description: str | None = None):
        self.root_table = root_table
        self.tables = tables
        self.version = version
        self.source = source
        self.description = description

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_mapping(cls, data: Any, *, source: str | None = None, strict: bool = True) -> Dictionary:
        """Validate a parsed YAML document. ``strict``: also refuse sharding keys that miss the root."""
        dictionary = _parse(data, source or "dictionary")
        if strict:
            problems = dictionary.chain_problems()
            if problems:
                p = problems[0]
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise DictionaryError(
                    f"{dictionary.source}: table {p.table!r}, sharding_key {p.column!r}: {p.message}{more}",
                    "every sharding key must name an organization-scoped parent that leads to the root "
                    f"table {dictionary.root_table!r}; {FORMAT_HINT}",
                )
        return dictionary

    def __repr__(self) -> str:
        return f"Dictionary(root={self.root_table!r}, tables={len(self.tables)}, source={self.source!r})"

    # ------------------------------------------------------------------ lookups

    def entry(self, table: str) -> TableEntry:
        try:
            return self.tables[table]
        except KeyError:
            raise DictionaryError(
                f"table {table!r} is not in the data dictionary ({self.source})",
                "add it to the dictionary: organization-scoped with a sharding_key, or cell_local / cluster_wide",
            ) from None

    def classification(self, table: str) -> str:
        return self.entry(table).classification

    def org_tables(self) -> list[str]:
        """Organization-scoped tables, the root included, in dictionary order."""
        return [name for name, e in self.tables.items() if e.organization_scoped]

    def blob_tables(self) -> list[str]:
        """Organization-scoped tables whose rows reference blobs, in dictionary order."""
        return [name for name, e in self.tables.items() if e.organization_scoped and e.blobs]

    def tables_of(self, classification: str) -> list[str]:
        return [name for name, e in self.tables.items() if e.classification == classification]

    def _org_entry(self, table: str) -> TableEntry:
        entry = self.entry(table)
        if not entry.organization_scoped:
            raise DictionaryError(
                f"table {table!r} is {entry.classification}: it holds no organization's rows",
                "only organization-scoped tables have a sharding key chain",
            )
        return entry

    # ------------------------------------------------------------------ chains

    def _paths(self, table: str, seen: tuple[str, ...]) -> Iterator[list[Hop]]:
        entry = self.tables[table]
        if entry.root:
            yield []
            return
        for column, parent in entry.sharding_key.items():
            problem = self._hop_problem(table, parent, seen)
            if problem:
                raise _ChainBroken(table, column, problem)
            for rest in self._paths(parent, seen + (table,)):
                yield [(table, column, parent), *rest]

    def _hop_problem(self, table: str, parent: str, seen: tuple[str, ...]) -> str | None:
        if parent not in self.tables:
            return f"parent table {parent!r} is not in the dictionary"
        if not self.tables[parent].organization_scoped:
            return f"parent table {parent!r} is {self.tables[parent].classification}, not organization data"
        if parent == table or parent in seen:
            cycle = " -> ".join([*seen, table, parent])
            return f"the sharding keys form a cycle ({cycle}) and never reach the root {self.root_table!r}"
        return None

    def chain(self, table: str) -> list[list[Hop]]:
        """For each alternative sharding key, the hops ``(table, column, parent)`` up to the root.

        ``chain(root) == [[]]`` (the root reaches itself with no hop). A table with two alternative
        keys whose parents have two alternatives each has four paths.
        """
        self._org_entry(table)
        try:
            return list(self._paths(table, ()))
        except _ChainBroken as exc:
            raise DictionaryError(
                f"table {exc.table!r}, sharding_key {exc.column!r}: {exc.message}",
                f"fix the sharding key in the dictionary ({self.source})",
            ) from None

    def chain_problems(self) -> list[ChainProblem]:
        """Every sharding key that does not lead to the root (empty for a sound dictionary)."""
        problems: list[ChainProblem] = []
        for name in self.org_tables():
            entry = self.tables[name]
            for column, parent in entry.sharding_key.items():
                problem = self._hop_problem(name, parent, ())
                if problem is None:
                    try:
                        for _ in self._paths(parent, (name,)):
                            pass
                    except _ChainBroken as exc:
                        problem = f"its chain is broken further up at {exc.table}.{exc.column}: {exc.message}"
                if problem:
                    problems.append(ChainProblem(name, column, problem))
        return problems

    # ------------------------------------------------------------------ keys in a live schema

    def root_key(self, live: LiveSchema) -> str:
        """The root table's primary-key column (the organization id) in ``live``."""
        info = _live_table(live, self.root_table)
        if len(info.primary_key) != 1:
            pk = ", ".join(info.primary_key) or "none"
            raise DictionaryError(
                f"root table {self.root_table!r} must have a single-column primary key (it has: {pk})",
                "the root table's primary key is the organization id",
            )
        return info.primary_key[0]

    def parent_key(self, table: str, column: str, parent: str, live: LiveSchema) -> str:
        """The column of ``parent`` that ``table.column`` holds: the FK's referenced column, else its PK."""
        child = _live_table(live, table)
        if not child.has_column(column):
            raise DictionaryError(
                f"table {table!r}: sharding key column {column!r} does not exist in the live schema",
                "fix the dictionary or the schema",
            )
        fk = live.foreign_key(table, column, parent)
        if fk is not None:
            return fk.ref_columns[fk.columns.index(column)]
        info = _live_table(live, parent)
        if len(info.primary_key) != 1:
            pk = ", ".join(info.primary_key) or "none"
            raise DictionaryError(
                f"table {table!r}: sharding key {column!r} -> {parent!r}: no foreign key names the referenced "
                f"column and {parent!r} has no single-column primary key (it has: {pk})",
                f"add a foreign key from {table}.{column} to {parent}",
            )
        return info.primary_key[0]

    def _direct(self, parent: str, key: str, live: LiveSchema) -> bool:
        """True when a value of ``parent.key`` *is* the organization id."""
        return parent == self.root_table and key == self.root_key(live)

    # ------------------------------------------------------------------ SQL

    def org_predicate(self, table: str, live: LiveSchema, alias: str = "t") -> sql.Composable:
        """A boolean expression selecting the rows of ``table`` (aliased ``alias``) of organization ``%(org)s``.

        Root: ``t.id = %(org)s``; direct key: ``t.organization_id = %(org)s``; indirect:
        ``t.project_id IN (SELECT h1.id FROM projects AS h1 WHERE h1.namespace_id IN (...))``;
        alternative keys are OR-ed.
        """
        self.chain(table)  # refuse broken chains with a clear message first
        aliases = _aliases(exclude={alias})
        return self._predicate(table, live, sql.Identifier(alias), aliases)

    def _predicate(self, table: str, live: LiveSchema, alias: sql.Identifier, aliases: Iterator[str],
                   hop_sql: str = _IN_SUBQUERY) -> sql.Composable:
        entry = self.tables[table]
        if entry.root:
            return sql.SQL("{}.{} = {}").format(alias, sql.Identifier(self.root_key(live)), ORG_PLACEHOLDER)
        parts: list[sql.Composable] = []
        for column, parent in entry.sharding_key.items():
            key = self.parent_key(table, column, parent, live)
            if self._direct(parent, key, live):
                parts.append(sql.SQL("{}.{} = {}").format(alias, sql.Identifier(column), ORG_PLACEHOLDER))
                continue
            hop = sql.Identifier(next(aliases))
            inner = self._predicate(parent, live, hop, aliases, hop_sql)
            parts.append(sql.SQL(hop_sql).format(
                alias, sql.Identifier(column), hop, sql.Identifier(key), _qualified(live, parent), hop, inner))
        if len(parts) == 1:
            return parts[0]
        return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))

    def org_key_predicate(self, table: str, live: LiveSchema, alias: str = "t") -> sql.Composable | None:
        """The same rows as :meth:`org_predicate`, in a form that drives index scans.

        Each level's keys are resolved once, top down, into an array (an InitPlan) that the next
        level looks up in its index: ``t.project_id = ANY(ARRAY(SELECT h1.id FROM projects AS h1
        WHERE h1.namespace_id = ANY(ARRAY(SELECT h2.id FROM namespaces AS h2 WHERE
        h2.organization_id = %(org)s))))``. No join, so no plan can probe the parents once per row of
        ``table``; the cost follows the organization's rows, not the table's (ADR 0017). None when a
        sharding-key column on the way leads no index (:meth:`unindexed_keys`): such a table is read
        by a scan whatever the organization's size.
        """
        self.chain(table)
        if self.unindexed_keys(table, live):
            return None
        return self._predicate(table, live, sql.Identifier(alias), _aliases(exclude={alias}), _ANY_ARRAY)

    def unindexed_keys(self, table: str, live: LiveSchema) -> list[tuple[str, str]]:
        """``(table, column)`` of every sharding-key column on the way from ``table`` to the root that
        leads no index: finding an organization's rows through it means reading the whole table."""
        out: list[tuple[str, str]] = []
        for path in self.chain(table):
            for hop_table, column, _parent in path:
                info = live.tables.get(hop_table)
                if info is not None and not info.indexed(column) and (hop_table, column) not in out:
                    out.append((hop_table, column))
        return out

    def org_of_row_sql(self, table: str, live: LiveSchema, rowvar: str) -> sql.Composable:
        """An expression giving the organization id of the row variable ``rowvar`` (``NEW``, ``OLD``, an alias).

        Direct key: ``NEW.organization_id``; indirect: a scalar subquery walking the hops;
        alternatives: ``COALESCE(...)``. NULL when the row leads to no organization.
        """
        if not _ROWVAR.match(rowvar):
            raise ValueError(f"row variable {rowvar!r} must be a plain identifier")
        self.chain(table)
        return self._org_of(table, live, sql.SQL(rowvar), _aliases(exclude={rowvar.lower()}))

    def _org_of(self, table: str, live: LiveSchema, row: sql.Composable, aliases: Iterator[str]) -> sql.Composable:
        entry = self.tables[table]
        if entry.root:
            return sql.SQL("{}.{}").format(row, sql.Identifier(self.root_key(live)))
        exprs: list[sql.Composable] = []
        for column, parent in entry.sharding_key.items():
            key = self.parent_key(table, column, parent, live)
            value = sql.SQL("{}.{}").format(row, sql.Identifier(column))
            if self._direct(parent, key, live):
                exprs.append(value)
                continue
            hop = sql.Identifier(next(aliases))
            inner = self._org_of(parent, live, hop, aliases)
            exprs.append(sql.SQL("(SELECT {} FROM {} AS {} WHERE {}.{} = {})").format(
                inner, _qualified(live, parent), hop, hop, sql.Identifier(key), value))
        if len(exprs) == 1:
            return exprs[0]
        return sql.SQL("COALESCE({})").format(sql.SQL(", ").join(exprs))

    # ------------------------------------------------------------------ order

    def copy_order(self, live: LiveSchema) -> list[str]:
        """Organization tables, parents before children, deterministic.

        Edges come from the sharding keys and from the foreign keys in ``live`` between organization
        tables (self-references ignored). Ties keep dictionary order. If foreign keys form a cycle,
        the first table (dictionary order) whose sharding-key parents are all placed goes next.
        """
        tables = self.org_tables()
        index = {name: i for i, name in enumerate(tables)}
        shard_deps: dict[str, set[str]] = {name: set() for name in tables}
        deps: dict[str, set[str]] = {name: set() for name in tables}
        for name in tables:
            for parent in self.tables[name].sharding_key.values():
                if parent in index and parent != name:
                    shard_deps[name].add(parent)
                    deps[name].add(parent)
            info = live.tables.get(name)
            for fk in info.foreign_keys if info else ():
                if fk.ref_table in index and fk.ref_table != name:
                    deps[name].add(fk.ref_table)
        order: list[str] = []
        placed: set[str] = set()
        remaining = set(tables)
        while remaining:
            ready = [index[n] for n in remaining if deps[n] <= placed]
            heapq.heapify(ready)
            if not ready:  # a foreign-key cycle: break it on sharding keys, then dictionary order
                candidates = sorted(remaining, key=index.__getitem__)
                pick = next((n for n in candidates if shard_deps[n] <= placed), candidates[0])
                ready = [index[pick]]
            while ready:
                name = tables[heapq.heappop(ready)]
                order.append(name)
                placed.add(name)
                remaining.discard(name)
                for other in remaining:
                    if name in deps[other] and deps[other] <= placed and index[other] not in ready:
                        heapq.heappush(ready, index[other])
        return order

    # ------------------------------------------------------------------ export

    def as_dict(self) -> dict:
        tables: dict[str, dict] = {}
        for name, e in self.tables.items():
            item: dict[str, Any] = {"classification": e.classification}
            if e.root:
                item["root"] = True
            if e.sharding_key:
                item["sharding_key"] = dict(e.sharding_key)
            if e.blobs:
                item["blobs"] = [
                    {k: v for k, v in (("key", b.key), ("key_sql", b.key_sql), ("name", b.name),
                                       ("checksum", b.checksum),
                                       ("algorithm", b.algorithm if b.algorithm != SHA256 else None),
                                       ("encoding", b.encoding), ("size", b.size)) if v}
                    for b in e.blobs
                ]
            if e.description:
                item["description"] = e.description
            if e.owner:
                item["owner"] = e.owner
            tables[name] = item
        return {"version": self.version, "root": self.root_table, "tables": tables}


class _ChainBroken(Exception):
    def __init__(self, table: str, column: str, message: str):
        super().__init__(message)
        self.table, self.column, self.message = table, column, message


def _aliases(exclude: set[str]) -> Iterator[str]:
    return (a for a in (f"h{i}" for i in itertools.count(1)) if a not in exclude)


def _qualified(live: LiveSchema, table: str) -> sql.Composable:
    return qualified(table)


def _live_table(live: LiveSchema, table: str):
    info = live.tables.get(table)
    if info is None:
        raise DictionaryError(
            f"table {table!r} of the dictionary does not exist in the cell",
            "run `migrator schema check` to compare the dictionary with the cell",
        )
    return info


# ---------------------------------------------------------------------- parsing


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (a second entry for one table would hide the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DictionaryError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1}",
                    "each table (and each key of a table) may appear only once",
                )
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


def _err(source: str, where: str, message: str, hint: str = FORMAT_HINT) -> DictionaryError:
    return DictionaryError(f"{source}: {where}: {message}", hint)


def _str(source: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _err(source, where, f"must be a non-empty string, not {value!r}")
    return value


def _parse_blobs(source: str, table: str, value: Any) -> tuple[BlobSpec, ...]:
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise _err(source, f"table {table!r}, key 'blobs'",
                   "must be a mapping {key or key_sql, checksum, algorithm, encoding, size} or a list of them")
    specs: list[BlobSpec] = []
    for i, item in enumerate(items):
        where = f"table {table!r}, key 'blobs'" + (f"[{i}]" if isinstance(value, list) else "")
        if not isinstance(item, dict):
            raise _err(source, where, f"must be a mapping with key (or key_sql) and optional checksum, algorithm, "
                       f"encoding, size, not {item!r}")
        unknown = sorted(set(map(str, item)) - _BLOB_KEYS)
        if unknown:
            raise _err(source, f"{where}.{unknown[0]}", "is not a known key (known: " + ", ".join(sorted(_BLOB_KEYS))
                       + ")")
        if ("key" in item) == ("key_sql" in item):
            raise _err(source, where, "needs exactly one of key (the column holding the object key) and key_sql "
                       "(an SQL expression over the row's columns computing it)")
        if "name" in item and "key_sql" not in item:
            raise _err(source, f"{where}.name", "names a computed key (key_sql); a key column names itself")
        if "checksum" not in item:
            for extra in ("algorithm", "encoding"):
                if extra in item:
                    raise _err(source, f"{where}.{extra}", "describes the checksum column, and there is none: name "
                               "it with checksum (or drop algorithm and encoding; without a checksum column the "
                               "object is hashed on both sides)")
        algorithm = item.get("algorithm", SHA256)
        if algorithm not in ALGORITHMS:
            raise _err(source, f"{where}.algorithm", f"{algorithm!r} is not a checksum algorithm the copier "
                       f"computes ({', '.join(ALGORITHMS)})")
        encoding = item.get("encoding")
        if encoding is not None and encoding not in ENCODINGS:
            raise _err(source, f"{where}.encoding", f"{encoding!r} is not one of {', '.join(ENCODINGS)} (hex: text "
                       "like 'ab01…', raw: the digest's bytes in a bytea column, base64: text like 'qwE=…'; leave it "
                       "out to follow the column's type)")
        size = item.get("size")
        checksum = item.get("checksum")
        spec = BlobSpec(
            key=_str(source, f"{where}.key", item["key"]) if "key" in item else None,
            key_sql=_str(source, f"{where}.key_sql", item["key_sql"]) if "key_sql" in item else None,
            name=_str(source, f"{where}.name", item["name"]) if "name" in item else None,
            checksum=_str(source, f"{where}.checksum", checksum) if checksum is not None else None,
            algorithm=algorithm,
            encoding=encoding,
            size=_str(source, f"{where}.size", size) if size is not None else None,
        )
        if spec.key_sql is not None and ";" in spec.key_sql:
            raise _err(source, f"{where}.key_sql", "must be one SQL expression over the row's columns; ';' is not "
                       "allowed (it would end the statement the expression is part of)")
        if spec.key_sql is not None and not _ROWVAR.match(spec.label):
            raise _err(source, f"{where}.name", f"{spec.label!r} must be a plain name (letters, digits, _)")
        if any(other.label == spec.label for other in specs):
            raise _err(source, where, f"a second blob named {spec.label!r}: give each key_sql its own name")
        specs.append(spec)
    return tuple(specs)


def _parse_table(source: str, name: Any, value: Any, named_root: bool = False) -> TableEntry:
    if not isinstance(name, str) or not name.strip():
        raise _err(source, f"table {name!r}", "table names must be non-empty strings")
    where = f"table {name!r}"
    if value is None or value == {}:
        raise _err(source, where, "needs a classification, a sharding_key or root: true")
    if not isinstance(value, dict):
        raise _err(source, where, f"must be a mapping of keys, not {value!r}")
    unknown = sorted(set(map(str, value)) - _TABLE_KEYS)
    if unknown:
        raise _err(source, f"{where}, key {unknown[0]!r}",
                   "is not a known key (known: " + ", ".join(sorted(_TABLE_KEYS)) + ")")
    root = value.get("root", named_root)
    if not isinstance(root, bool):
        raise _err(source, f"{where}, key 'root'", f"must be true or false, not {root!r}")
    if named_root and not root:
        raise _err(source, f"{where}, key 'root'", "is false, but the top-level 'root' names this table")
    sharding_key: dict[str, str] = {}
    if "sharding_key" in value:
        raw = value["sharding_key"]
        if not isinstance(raw, dict) or not raw:
            raise _err(source, f"{where}, key 'sharding_key'",
                       "must be a non-empty mapping column: parent_table (several entries: alternatives)")
        for column, parent in raw.items():
            col = _str(source, f"{where}, key 'sharding_key' (column)", column)
            sharding_key[col] = _str(source, f"{where}, key 'sharding_key.{col}'", parent)
    classification = value.get("classification")
    if classification is None:
        if not (root or sharding_key):
            raise _err(source, where, "needs a classification (organization, cell_local, cluster_wide), "
                       "a sharding_key or root: true")
        classification = ORGANIZATION
    elif classification not in CLASSIFICATIONS:
        raise _err(source, f"{where}, key 'classification'",
                   f"{classification!r} is not one of {', '.join(CLASSIFICATIONS)}")
    if classification != ORGANIZATION:
        for key in ("sharding_key", "blobs"):
            if key in value:
                raise _err(source, f"{where}, key {key!r}",
                           f"a {classification} table holds no organization's rows, so it has no {key}")
        if root:
            raise _err(source, f"{where}, key 'root'", f"the root table cannot be {classification}")
    elif root and sharding_key:
        raise _err(source, f"{where}, key 'sharding_key'", "the root table has no sharding key (its primary "
                   "key is the organization id)")
    elif not root and not sharding_key:
        raise _err(source, f"{where}, key 'sharding_key'", "an organization-scoped table needs a sharding_key "
                   "(column: parent_table) leading to the root")
    blobs = _parse_blobs(source, name, value["blobs"]) if "blobs" in value else ()
    description = value.get("description")
    owner = value.get("owner")
    return TableEntry(
        name=name,
        classification=classification,
        sharding_key=sharding_key,
        root=root,
        blobs=blobs,
        description=_str(source, f"{where}, key 'description'", description) if description is not None else None,
        owner=_str(source, f"{where}, key 'owner'", owner) if owner is not None else None,
    )


def _parse(data: Any, source: str) -> Dictionary:
    if not isinstance(data, dict):
        raise _err(source, "(top level)", "must be a mapping with version, root and tables")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise _err(source, f"key {unknown[0]!r}", "is not a known key (known: version, root, tables, description)")
    version = data.get("version", 1)
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise _err(source, "key 'version'", f"{version!r} is not supported (supported: 1)")
    raw_tables = data.get("tables")
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise _err(source, "key 'tables'", "is required: a mapping of table name to its entry")
    root = data.get("root")
    tables = {name: _parse_table(source, name, value, named_root=root is not None and name == root)
              for name, value in raw_tables.items()}

    flagged = [name for name, e in tables.items() if e.root]
    if root is None:
        if len(flagged) != 1:
            raise _err(source, "key 'root'", "is required: the name of the root table (whose primary key is "
                       "the organization id)")
        root = flagged[0]
    root = _str(source, "key 'root'", root)
    if root not in tables:
        raise _err(source, "key 'root'", f"names table {root!r}, which is not under 'tables'")
    entry = tables[root]
    if entry.classification != ORGANIZATION:
        raise _err(source, f"table {root!r}, key 'classification'", "the root table must be organization-scoped")
    if entry.sharding_key:
        raise _err(source, f"table {root!r}, key 'sharding_key'", "the root table has no sharding key")
    others = [name for name in flagged if name != root]
    if others:
        raise _err(source, f"table {others[0]!r}, key 'root'", f"only one root table is allowed ({root!r})")
    description = data.get("description")
    return Dictionary(root, tables, version=version, source=source,
                      description=description if isinstance(description, str) else None)


def load_dictionary(path: str | Path, *, strict: bool = True) -> Dictionary:
    """Read and validate a dictionary file; :class:`DictionaryError` names the table and key at fault.

    ``strict=False`` accepts sharding keys that do not reach the root (``chain_problems()`` lists
    them), so ``migrator schema check`` can report them with everything else.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DictionaryError(
            f"data dictionary {path} not found",
            "set dictionary_path in the config (relative paths are relative to the config file)",
        ) from None
    except OSError as exc:
        raise DictionaryError(f"data dictionary {path} cannot be read: {exc.strerror}",
                              "check the file's permissions") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DictionaryError as exc:
        raise DictionaryError(f"{path}: {exc.message}", exc.hint) from None
    except yaml.YAMLError as exc:
        raise DictionaryError(f"data dictionary {path} is not valid YAML: {exc}", "fix the YAML syntax") from None
    return Dictionary.from_mapping(data, source=str(path), strict=strict)
