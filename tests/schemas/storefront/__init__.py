"""Storefront, the second schema of the test suite: cells built by plain SQL, never by the migrator.

``create_cell(dsn, id_base=..., tenants=...)`` runs ``schema.sql`` then ``data.sql`` (what the
application's migrations and a while of traffic would have left in a cell); ``write_blobs`` puts
the attachment objects the rows reference into a cell's blob directory (the application's object
storage); ``schema_snapshot`` captures a database's schema to compare before and after adoption.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

HERE = Path(__file__).parent
SCHEMA_SQL = HERE / "schema.sql"
DATA_SQL = HERE / "data.sql"
DICTIONARY = HERE / "dictionary.yaml"

ORG_TABLES = ("tenants", "accounts", "api_keys", "stores", "customers", "orders", "line_items", "notes", "attachments",
              "activity")


# activity's partitions (a schema may keep them elsewhere, like GitLab's gitlab_partitions_dynamic)
ACTIVITY_PARTITIONS = ("activity_2024", "activity_2025", "activity_default")


def create_cell(dsn: str, *, id_base: int = 0, tenants: int = 2, orders_per_customer: int = 2,
                data: bool = True, partition_schema: str | None = None,
                table_schemas: dict[str, str] | None = None) -> None:
    """Build a Storefront cell in an empty database: the schema, then (``data``) its rows.

    ``partition_schema``: move activity's partitions into that schema (created), away from their
    partitioned parent in ``public``. ``table_schemas``: move these tables (with their sequences) into
    those schemas (created), after the rows are in, as an application's later migration would; the
    dictionary must then name them so (:func:`dictionary_in_schemas`)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.read_text())
        if data:
            conn.execute("SELECT set_config('storefront.id_base', %s, false), "
                         "set_config('storefront.tenants', %s, false), "
                         "set_config('storefront.orders_per_customer', %s, false)",
                         (str(id_base), str(tenants), str(orders_per_customer)))
            conn.execute(DATA_SQL.read_text())
        moves = dict(table_schemas or {})
        moves.update({part: partition_schema for part in ACTIVITY_PARTITIONS} if partition_schema else {})
        for table, schema in moves.items():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                sql.Identifier("public", table), sql.Identifier(schema)))


def dictionary_in_schemas(table_schemas: dict[str, str], path: Path) -> Path:
    """Storefront's dictionary with the tables of ``table_schemas`` named ``schema.table`` (their entries
    and every sharding key leading to them), written to ``path``."""
    data = yaml.safe_load(DICTIONARY.read_text())
    rename = {t: f"{s}.{t}" for t, s in table_schemas.items()}
    tables = {}
    for name, entry in data["tables"].items():
        if isinstance(entry, dict) and entry.get("sharding_key"):
            entry["sharding_key"] = {col: rename.get(parent, parent) for col, parent in entry["sharding_key"].items()}
        tables[rename.get(name, name)] = entry
    data["tables"] = tables
    if data.get("root") in rename:
        data["root"] = rename[data["root"]]
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return Path(path)


def blob_bytes(key: str) -> bytes:
    """The bytes of the attachment object ``key`` (data.sql's checksums describe exactly these)."""
    return (f"storefront {key}\n" * 16).encode()


def write_blobs(dsn: str, blob_dir: Path, table: tuple[str, str] = ("public", "attachments")) -> int:
    """Write every object the cell's attachments (``table``: schema and name) reference into ``blob_dir``;
    returns how many."""
    blob_dir = Path(blob_dir)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(sql.SQL("SELECT blob_key, blob_sha256 FROM {} WHERE blob_key IS NOT NULL").format(
            sql.Identifier(*table))).fetchall()
    for key, sha in rows:
        data = blob_bytes(key)
        assert hashlib.sha256(data).hexdigest() == sha, key
        path = blob_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return len(rows)


def adopt_config(config_path: Path, *, dictionary: Path = DICTIONARY) -> None:
    """Mark every cell of a fleet config ``adopt: true`` and point ``dictionary_path`` at ``dictionary``."""
    config = yaml.safe_load(Path(config_path).read_text())
    config["dictionary_path"] = str(dictionary)
    for cell in config["cells"].values():
        cell["adopt"] = True
    Path(config_path).write_text(yaml.safe_dump(config, sort_keys=False))


# Everything a schema consists of, read from the catalog (sequence positions excluded: they are data).
_CATALOG = """
SELECT 'namespace', n.nspname, coalesce(obj_description(n.oid, 'pg_namespace'), '')
  FROM pg_namespace n WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'relation', n.nspname || '.' || c.relname, c.relkind::text || ' ' || coalesce(array_to_string(c.relacl, ','), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'column', n.nspname || '.' || c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' ' || a.attidentity::text
       || ' ' || a.attgenerated::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'constraint', n.nspname || '.' || c.relname || '.' || con.conname, pg_get_constraintdef(con.oid)
  FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'trigger', c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       md5(p.prosrc) || ' ' || p.prosecdef::text || ' ' || coalesce(array_to_string(p.proconfig, ','), '')
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'sequence', s.schemaname || '.' || s.sequencename,
       concat_ws(' ', s.data_type, s.start_value, s.min_value, s.max_value, s.increment_by, s.cycle, s.cache_size)
  FROM pg_sequences s
UNION ALL
SELECT 'type', n.nspname || '.' || t.typname, t.typtype::text
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
ORDER BY 1, 2, 3
"""


def schema_snapshot(dsn: str) -> dict[str, object]:
    """The database's schema: ``pg_dump --schema-only`` when available, and a catalog listing."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = [tuple(r) for r in conn.execute(_CATALOG).fetchall()]
    snapshot: dict[str, object] = {"catalog": catalog}
    pg_dump = shutil.which("pg_dump")
    if pg_dump:
        out = subprocess.run([pg_dump, "--schema-only", "--no-owner", "--dbname", dsn], capture_output=True,
                             text=True, timeout=60)
        if out.returncode == 0:  # an older pg_dump than the server refuses: the catalog listing remains
            # \restrict / \unrestrict lines carry a random key per dump (pg_dump since 2025's minor releases)
            snapshot["pg_dump"] = "\n".join(line for line in out.stdout.splitlines()
                                            if not line.startswith(("\\restrict", "\\unrestrict")))
    return snapshot
