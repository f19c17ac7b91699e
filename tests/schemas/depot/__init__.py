"""Depot, the third schema of the test suite: GitLab's blob layouts (tests/schemas/depot/schema.sql).

``create_cell(dsn, blob_dir, id_base=..., tenants=...)`` runs ``schema.sql``, writes each tenant's
rows and puts every object they reference into ``blob_dir`` (the cell's object storage), the way
the application would have: sha256 digests as raw ``bytea``, md5 as hex, hashed-storage keys computed
from the project id, content-addressed LFS objects (one of them, :data:`SHARED_LFS`, referenced by
every tenant of every cell) and avatars without a checksum.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import psycopg
from psycopg import sql

HERE = Path(__file__).parent
SCHEMA_SQL = HERE / "schema.sql"
DICTIONARY = HERE / "dictionary.yaml"

ORG_TABLES = ("tenants", "projects", "package_files", "uploads", "repository_bundles", "lfs_objects_projects",
              "avatars")
BLOB_TABLES = ("package_files", "uploads", "repository_bundles", "lfs_objects_projects", "avatars")

# The bytes of the LFS object every tenant references (deduplicated by its oid, the sha256).
SHARED_LFS = b"a large file every tenant pushed\n" * 64
SHARED_OID = hashlib.sha256(SHARED_LFS).hexdigest()


def lfs_key(oid: str) -> str:
    """The object key of an LFS object (the dictionary's key_sql of lfs_objects_projects)."""
    return f"lfs-objects/{oid[:2]}/{oid[2:4]}/{oid[4:]}"


def bundle_key(project_id: int) -> str:
    """Hashed storage: the key of a project's repository bundle (the key_sql of repository_bundles)."""
    h = hashlib.sha256(str(project_id).encode()).hexdigest()
    return f"@hashed/{h[:2]}/{h[2:4]}/{h}.bundle"


def _put(blob_dir: Path, key: str, data: bytes) -> None:
    path = Path(blob_dir) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def create_cell(dsn: str, blob_dir: Path | None = None, *, id_base: int = 0, tenants: int = 2,
                data: bool = True) -> list[int]:
    """Build a Depot cell in an empty database: the schema, then (``data``) ``tenants`` tenants' rows
    with their objects in ``blob_dir``. Identity columns start at ``id_base + 1`` (the cell's ID plan).
    Returns the tenant ids."""
    made: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.read_text())
        for (seq,) in conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall():
            conn.execute(sql.SQL("ALTER SEQUENCE {} RESTART WITH {}").format(
                sql.Identifier("public", seq), sql.Literal(id_base + 1)))
        if not data:
            return made
        for t in range(tenants):
            with conn.transaction():
                tenant = conn.execute("INSERT INTO tenants (path) VALUES (%s) RETURNING tenant_id",
                                      (f"tenant-{id_base}-{t}",)).fetchone()[0]
                made.append(tenant)
                avatar = f"avatars/{tenant}.png"
                conn.execute("INSERT INTO avatars (tenant_id, avatar_key) VALUES (%s, %s)", (tenant, avatar))
                _put(blob_dir, avatar, f"avatar of tenant {tenant}\n".encode() * 8)
                for p in range(2):
                    project = conn.execute(
                        "INSERT INTO projects (tenant_id, name) VALUES (%s, %s) RETURNING project_id",
                        (tenant, f"project-{p}")).fetchone()[0]
                    for i in range(2):
                        key = f"packages/{project}/{i}/package-{i}.tgz"
                        body = f"package {i} of project {project}\n".encode() * 32
                        conn.execute("INSERT INTO package_files (project_id, file_store_path, file_sha256, size)"
                                     " VALUES (%s, %s, %s, %s)",
                                     (project, key, hashlib.sha256(body).digest(), len(body)))
                        _put(blob_dir, key, body)
                    key = f"uploads/{project}/screenshot.png"
                    body = f"upload of project {project}\n".encode() * 16
                    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
                    conn.execute("INSERT INTO uploads (project_id, path, checksum)"
                                 " VALUES (%s, %s, %s), (%s, NULL, NULL)", (project, key, md5, project))
                    _put(blob_dir, key, body)
                    body = f"git bundle of project {project}\n".encode() * 40
                    conn.execute("INSERT INTO repository_bundles (project_id, bundle_sha256) VALUES (%s, %s)",
                                 (project, base64.b64encode(hashlib.sha256(body).digest()).decode()))
                    _put(blob_dir, bundle_key(project), body)
                    own = f"lfs object of project {project}\n".encode() * 24
                    for body in (own, SHARED_LFS):
                        oid = hashlib.sha256(body).hexdigest()
                        conn.execute("INSERT INTO lfs_objects_projects (project_id, oid, size) VALUES (%s, %s, %s)",
                                     (project, oid, len(body)))
                        _put(blob_dir, lfs_key(oid), body)
    return made


def blob_keys(dsn: str, tenant: int) -> dict[str, set[str]]:
    """Per blob table, the object keys the tenant's rows reference (computed here, not by the migrator)."""
    out: dict[str, set[str]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        projects = [r[0] for r in conn.execute("SELECT project_id FROM projects WHERE tenant_id = %s", (tenant,))]
        q = {"package_files": "SELECT file_store_path FROM package_files WHERE project_id = ANY(%s)",
             "uploads": "SELECT path FROM uploads WHERE project_id = ANY(%s) AND path IS NOT NULL",
             "lfs_objects_projects": "SELECT oid FROM lfs_objects_projects WHERE project_id = ANY(%s)"}
        for table, query in q.items():
            keys = {r[0] for r in conn.execute(query, (projects,))}
            out[table] = {lfs_key(k) for k in keys} if table == "lfs_objects_projects" else keys
        out["repository_bundles"] = {bundle_key(p) for p in projects}
        out["avatars"] = {r[0] for r in conn.execute("SELECT avatar_key FROM avatars WHERE tenant_id = %s", (tenant,))}
    return out
