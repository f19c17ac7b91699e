"""Seed a provisioned cell with sample organizations (``migrator seed``).

Each organization gets a tree of rows over the sample schema (migrator/sample/schema.sql) in
realistic proportions (notes and issues largest, label links and CI builds sizeable), plus blobs
in the cell's blob store that its uploads, LFS objects and some CI builds reference by key, sha256
and size. Rows are generated *inside* PostgreSQL (``INSERT ... SELECT FROM generate_series``), one
transaction per organization: a million-row organization takes about 15 s (PostgreSQL 15, 2 cores,
freeze guard installed). IDs come from the cell's sequences (column defaults), so they sit in the
cell's ID range; an organization id outside it means the cell was not provisioned and is refused.

After an organization's rows are committed its route is registered with the Topology Service
(organization -> this cell). Re-running the seeder adds new organizations and never touches
existing ones; the few cluster-wide users and cell-local settings it needs are inserted
idempotently.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from migrator.blobs.store import open_store
from migrator.db import cell_connection
from migrator.errors import MigratorError

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]

# Tables the seeder writes, in foreign-key order (parents first).
ORG_TABLES = (
    "organizations",
    "namespaces",
    "projects",
    "issues",
    "merge_requests",
    "notes",
    "labels",
    "label_links",
    "uploads",
    "lfs_objects",
    "ci_pipelines",
    "ci_builds",
)
REQUIRED_TABLES = (*ORG_TABLES, "users", "application_settings")

# Share of an organization's rows (after the organization row and the blob-owning uploads/LFS
# rows) per table. Sums to 1.
PROPORTIONS = {
    "namespaces": 0.005,
    "projects": 0.015,
    "issues": 0.17,
    "merge_requests": 0.08,
    "notes": 0.33,
    "labels": 0.02,
    "label_links": 0.15,
    "ci_pipelines": 0.06,
    "ci_builds": 0.17,
}

# The smallest organization the seeder makes: enough for one row in every organization table.
MIN_ORG_ROWS = 20
# The fewest blobs an organization gets when there are blobs at all: one upload, LFS object, artifact.
MIN_ORG_BLOBS = 3
# Zipf exponent of the skewed mix of organization sizes (1: the n-th org is 1/n of the first).
SKEW_EXPONENT = 1.2
SEED_USERS = 20


@dataclass
class SeededOrg:
    organization_id: int
    cell: str
    rows_by_table: dict[str, int] = field(default_factory=dict)
    blobs: int = 0
    blob_bytes: int = 0

    @property
    def rows(self) -> int:
        return sum(self.rows_by_table.values())

    def as_dict(self) -> dict:
        return {
            "organization_id": self.organization_id,
            "cell": self.cell,
            "rows": self.rows,
            "rows_by_table": dict(self.rows_by_table),
            "blobs": self.blobs,
            "blob_bytes": self.blob_bytes,
        }


# --- planning (pure) ---------------------------------------------------------------------------


def _weights(n: int, skew: bool) -> list[float]:
    if not skew:
        return [1.0] * n
    raw = [1.0 / (i + 1) ** SKEW_EXPONENT for i in range(n)]
    total = sum(raw)
    return [n * w / total for w in raw]  # mean 1: the fleet total stays n * rows


def plan_org_sizes(orgs: int, rows: int, *, skew: bool = True) -> list[int]:
    """Rows per organization: ``rows`` each, or a Zipf-like mix (biggest first) with the same total."""
    return [max(MIN_ORG_ROWS, round(rows * w)) for w in _weights(orgs, skew)]


def plan_blob_counts(orgs: int, blobs: int, *, skew: bool = True) -> list[int]:
    """Blobs per organization, skewed like the row counts.

    At least ``MIN_ORG_BLOBS`` each when ``blobs`` > 0, so every organization has an upload, an LFS
    object and a CI artifact; ``blobs=0`` seeds no blobs (uploads and lfs_objects stay empty).
    """
    if blobs <= 0:
        return [0] * orgs
    return [max(MIN_ORG_BLOBS, round(blobs * w)) for w in _weights(orgs, skew)]


def split_blobs(count: int) -> dict[str, int]:
    """How an organization's blobs divide between uploads, LFS objects and CI build artifacts."""
    lfs = max(count // 4, 1 if count >= 2 else 0)
    artifacts = max(count // 4, 1 if count >= 3 else 0)
    return {"uploads": count - lfs - artifacts, "lfs_objects": lfs, "artifacts": artifacts}


def plan_tables(total: int, blob_split: dict[str, int]) -> dict[str, int]:
    """Rows per table for an organization of ``total`` rows (exactly ``total`` when it is >= MIN_ORG_ROWS)."""
    counts = {"organizations": 1, "uploads": blob_split["uploads"], "lfs_objects": blob_split["lfs_objects"]}
    budget = max(total - 1 - counts["uploads"] - counts["lfs_objects"], len(PROPORTIONS))
    for table, share in PROPORTIONS.items():
        counts[table] = max(1, int(budget * share))
    counts["ci_builds"] = max(counts["ci_builds"], blob_split["artifacts"])
    # A label link is a unique (label, target) pair.
    counts["label_links"] = min(counts["label_links"], counts["labels"] * (counts["issues"] + counts["merge_requests"]))
    # Notes absorb the rounding so the organization has exactly the planned number of rows.
    rest = total - sum(counts.values())
    counts["notes"] = max(1, counts["notes"] + rest)
    return {table: counts[table] for table in ORG_TABLES}


def _coprime_stride(n: int) -> int:
    """A multiplier near 0.618 * n that is coprime to n (so g -> g * stride mod n is a bijection)."""
    stride = max(1, int(n * 0.618))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


# --- SQL ---------------------------------------------------------------------------------------
# Row ordinals of the parents of the rows being generated live in a temporary table, so a child
# row picks its parent by joining on ``mod(g, parent_count)``.

_TEMP_TABLES = """
CREATE TEMP TABLE seed_ids (
    kind text NOT NULL, ord bigint NOT NULL, id bigint NOT NULL, project_id bigint,
    PRIMARY KEY (kind, ord)
) ON COMMIT DROP;
CREATE TEMP TABLE seed_blobs (
    kind text NOT NULL, ord bigint NOT NULL, key text NOT NULL, sha256 text NOT NULL, size bigint NOT NULL,
    filename text NOT NULL, content_type text,
    PRIMARY KEY (kind, ord)
) ON COMMIT DROP;
"""

_USERS = """
INSERT INTO users (username, email, name, admin, preferences, created_at)
SELECT 'seed-user-' || g, 'seed-user-' || g || '@example.com',
       (ARRAY['Zoë Ångström', 'José Müller', '山田 太郎', 'Ольга Петрова', 'Chloé 🚀 Dubois'])[1 + mod(g, 5)],
       g = 1,
       jsonb_build_object('theme', (ARRAY['light', 'dark'])[1 + mod(g, 2)], 'locale', 'fr_FR', 'emoji', '✨'),
       now() - make_interval(days => g)
FROM generate_series(1, %(n)s) g
ON CONFLICT (username) DO NOTHING
"""

_SETTINGS = """
INSERT INTO application_settings (name, value)
VALUES ('signup_enabled', 'true'::jsonb),
       ('default_branch_name', '"main"'::jsonb),
       ('banner', '{"text": "Bienvenue — ようこそ 🚀", "color": "#fc6d26"}'::jsonb),
       ('max_artifacts_size_mb', '100'::jsonb)
ON CONFLICT (name) DO NOTHING
"""

_LOAD_USERS = """
INSERT INTO seed_ids (kind, ord, id)
SELECT 'users', row_number() OVER (ORDER BY id) - 1, id
FROM (SELECT id FROM users ORDER BY id LIMIT 1000) u
"""

_ORGANIZATION = """
INSERT INTO organizations (id, name, path, description, settings, created_at, updated_at)
VALUES (%(id)s, %(name)s, %(path)s, %(description)s, %(settings)s, now() - interval '400 days', now())
"""

_NAMESPACES_TOP = """
WITH ins AS (
  INSERT INTO namespaces (organization_id, parent_id, name, path, type, description, visibility_level, created_at)
  SELECT %(org)s, NULL, 'Group ' || g || ' – Ünïcödé 🚀', 'group-' || g, 'Group',
         CASE WHEN mod(g, 3) = 0 THEN NULL ELSE 'Top-level group № ' || g || ' (日本)' END,
         (ARRAY[0, 10, 20])[1 + mod(g, 3)],
         now() - interval '1 minute' * (mod(g::bigint * 7919, 500000))
  FROM generate_series(0, %(n)s - 1) g
  RETURNING id)
INSERT INTO seed_ids (kind, ord, id) SELECT 'ns_top', row_number() OVER (ORDER BY id) - 1, id FROM ins
"""

_NAMESPACES_SUB = """
INSERT INTO namespaces (organization_id, parent_id, name, path, type, description, visibility_level, created_at)
SELECT %(org)s, t.id, 'Subgroup ' || g || ' · café', 'subgroup-' || g, 'Group',
       CASE WHEN mod(g, 2) = 0 THEN NULL ELSE 'Подгруппа ' || g END,
       (ARRAY[0, 10, 20])[1 + mod(g, 3)],
       now() - interval '1 minute' * (mod(g::bigint * 6151, 400000))
FROM generate_series(0, %(n)s - 1) g
JOIN seed_ids t ON t.kind = 'ns_top' AND t.ord = mod(g, %(ntop)s)
"""

_NAMESPACES_TRAVERSAL = """
UPDATE namespaces
SET traversal_ids = CASE WHEN parent_id IS NULL THEN ARRAY[id] ELSE ARRAY[parent_id, id] END
WHERE organization_id = %(org)s
"""

_NAMESPACES_LOAD = """
INSERT INTO seed_ids (kind, ord, id)
SELECT 'namespaces', row_number() OVER (ORDER BY id) - 1, id FROM namespaces WHERE organization_id = %(org)s
"""

_PROJECTS = """
WITH ins AS (
  INSERT INTO projects (namespace_id, name, path, description, archived, star_count, topics, settings,
                        storage_cost, avatar, created_at, last_activity_at)
  SELECT n.id, 'Project ' || g || ' café 🚀', 'project-' || g,
         CASE WHEN mod(g, 4) = 0 THEN NULL ELSE 'Описание проекта ' || g || ' — 日本語のテキスト' END,
         mod(g, 17) = 0,
         mod(g::bigint * 7, 500),
         CASE WHEN mod(g, 5) = 0 THEN NULL
              ELSE ARRAY['ruby', CASE WHEN mod(g, 3) = 0 THEN NULL ELSE 'go' END, 'naïve'] END,
         jsonb_build_object('visibility', (ARRAY['private', 'internal', 'public'])[1 + mod(g, 3)],
                            'features', jsonb_build_object('issues', true, 'wiki', mod(g, 2) = 0),
                            'emoji', '🚀'),
         CASE WHEN mod(g, 6) = 0 THEN NULL ELSE round((random() * 10000)::numeric, 2) END,
         CASE WHEN mod(g, 3) = 0 THEN NULL
              ELSE decode('89504e470d0a1a0a00ff', 'hex') || decode(md5(g::text), 'hex') END,
         now() - interval '1 minute' * (mod(g::bigint * 7919, 500000)),
         CASE WHEN mod(g, 5) = 0 THEN NULL ELSE now() - interval '1 minute' * (mod(g::bigint * 104729, 50000)) END
  FROM generate_series(0, %(n)s - 1) g
  JOIN seed_ids n ON n.kind = 'namespaces' AND n.ord = mod(g, %(nparent)s)
  RETURNING id)
INSERT INTO seed_ids (kind, ord, id, project_id)
SELECT 'projects', row_number() OVER (ORDER BY id) - 1, id, id FROM ins
"""

_ISSUES = """
WITH ins AS (
  INSERT INTO issues (project_id, iid, title, description, author_id, state, confidential, weight, time_estimate,
                      labels_cache, metadata, due_date, created_at, closed_at)
  SELECT p.id, g / %(nparent)s + 1,
         'Issue #' || g || ': café crashes on 🚀 (日本)',
         CASE WHEN mod(g, 7) = 0 THEN NULL
              ELSE repeat('Steps to reproduce — ñandú, Zürich, 東京. ', 1 + mod(g, 6)) END,
         CASE WHEN mod(g, 13) = 0 THEN NULL ELSE u.id END,
         CASE WHEN mod(g, 3) = 0 THEN 'closed' ELSE 'opened' END,
         mod(g, 19) = 0,
         CASE WHEN mod(g, 4) = 0 THEN NULL ELSE mod(g, 10) END,
         CASE WHEN mod(g, 5) = 0 THEN NULL ELSE round((random() * 100)::numeric, 2) END,
         CASE WHEN mod(g, 6) = 0 THEN NULL
              ELSE ARRAY['bug', CASE WHEN mod(g, 4) = 1 THEN NULL ELSE 'priority::1' END, 'ü-label'] END,
         jsonb_build_object('severity', (ARRAY['low', 'medium', 'high'])[1 + mod(g, 3)], 'votes', mod(g, 42),
                            'reporter', 'José 🚀', 'links', jsonb_build_array(g, g + 1), 'ratio', random()),
         CASE WHEN mod(g, 8) = 0 THEN current_date + mod(g, 90)::int END,
         now() - interval '1 minute' * (10000 + mod(g::bigint * 7919, 900000)),
         CASE WHEN mod(g, 3) = 0 THEN now() - interval '1 minute' * (mod(g::bigint * 7919, 10000)) END
  FROM generate_series(0, %(n)s - 1) g
  JOIN seed_ids p ON p.kind = 'projects' AND p.ord = mod(g, %(nparent)s)
  LEFT JOIN seed_ids u ON u.kind = 'users' AND u.ord = mod(g, %(nusers)s)
  RETURNING id, project_id)
INSERT INTO seed_ids (kind, ord, id, project_id)
SELECT 'issues', row_number() OVER (ORDER BY id) - 1, id, project_id FROM ins
"""

_MERGE_REQUESTS = """
WITH ins AS (
  INSERT INTO merge_requests (project_id, iid, title, description, author_id, source_branch, target_branch, state,
                              draft, diff_stats, merge_sha, created_at, merged_at)
  SELECT p.id, g / %(nparent)s + 1,
         CASE WHEN mod(g, 5) = 0 THEN 'Draft: ' ELSE '' END || 'Résoudre le problème ' || g || ' ✅',
         CASE WHEN mod(g, 6) = 0 THEN NULL
              ELSE 'Closes #' || g || E'.\\n\\n変更の説明 — ' || repeat('ø', 1 + mod(g, 40)) END,
         CASE WHEN mod(g, 11) = 0 THEN NULL ELSE u.id END,
         'feature/' || g || '-ñ', (ARRAY['main', 'main', 'stable'])[1 + mod(g, 3)],
         (ARRAY['opened', 'merged', 'merged', 'closed'])[1 + mod(g, 4)],
         mod(g, 5) = 0,
         jsonb_build_object('additions', mod(g::bigint * 31, 1000), 'deletions', mod(g::bigint * 17, 700),
                            'files', jsonb_build_array('app/models/café.rb', 'README.md')),
         CASE WHEN mod(g, 4) IN (1, 2) THEN decode(md5('mr' || g), 'hex') || decode(md5('sha' || g), 'hex') END,
         now() - interval '1 minute' * (10000 + mod(g::bigint * 7919, 900000)),
         CASE WHEN mod(g, 4) IN (1, 2) THEN now() - interval '1 minute' * (mod(g::bigint * 7919, 10000)) END
  FROM generate_series(0, %(n)s - 1) g
  JOIN seed_ids p ON p.kind = 'projects' AND p.ord = mod(g, %(nparent)s)
  LEFT JOIN seed_ids u ON u.kind = 'users' AND u.ord = mod(g, %(nusers)s)
  RETURNING id, project_id)
INSERT INTO seed_ids (kind, ord, id, project_id)
SELECT 'merge_requests', row_number() OVER (ORDER BY id) - 1, id, project_id FROM ins
"""

# Issues and merge requests as one list of targets (ordinals 0..ni-1 issues, ni.. MRs).
_TARGETS = """
INSERT INTO seed_ids (kind, ord, id, project_id)
SELECT 'targets', ord, id, project_id FROM seed_ids WHERE kind = 'issues'
UNION ALL
SELECT 'targets', ord + %(nissues)s, id, project_id FROM seed_ids WHERE kind = 'merge_requests'
"""

_NOTES = """
INSERT INTO notes (project_id, noteable_type, noteable_id, author_id, note, system, position, attachment_digest,
                   created_at, updated_at)
SELECT t.project_id,
       CASE WHEN t.ord < %(nissues)s THEN 'Issue' ELSE 'MergeRequest' END,
       t.id,
       CASE WHEN mod(g, 17) = 0 THEN NULL ELSE u.id END,
       CASE WHEN mod(g, 10) = 0 THEN 'changed the description'
            ELSE 'LGTM 👍 — merci! ' || repeat('Ça marche très bien 日本語 ', 1 + mod(g, 8)) END,
       mod(g, 10) = 0,
       CASE WHEN mod(g, 4) = 3 THEN jsonb_build_object('path', 'lib/naïve.rb', 'line', mod(g, 300),
                                                       'side', 'right', 'context', jsonb_build_array(NULL, 'x'))
       END,
       CASE WHEN mod(g, 9) = 0 THEN sha256(('note' || g)::bytea) END,
       now() - interval '1 minute' * (mod(g::bigint * 7919, 900000)),
       CASE WHEN mod(g, 5) = 0 THEN now() - interval '1 minute' * (mod(g::bigint * 13, 1000)) END
FROM generate_series(0, %(n)s - 1) g
JOIN seed_ids t ON t.kind = 'targets'
 AND t.ord = CASE WHEN %(nmrs)s > 0 AND mod(g, 4) = 3 THEN %(nissues)s + mod(g, greatest(%(nmrs)s, 1))
                  ELSE mod(g, %(nissues)s) END
LEFT JOIN seed_ids u ON u.kind = 'users' AND u.ord = mod(g, %(nusers)s)
"""

_LABELS = """
WITH ins AS (
  INSERT INTO labels (project_id, title, color, description, priority, created_at)
  SELECT p.id,
         (ARRAY['bug', 'feature', 'documentation', 'priority::high', 'needs-review', 'étiquette ⚑'])[1 + mod(g, 6)]
           || ' ' || g,
         '#' || substr(md5('label' || g), 1, 6),
         CASE WHEN mod(g, 3) = 0 THEN NULL ELSE 'Label № ' || g || ' — ラベル' END,
         CASE WHEN mod(g, 4) = 0 THEN mod(g, 10) END,
         now() - interval '1 minute' * (mod(g::bigint * 7919, 900000))
  FROM generate_series(0, %(n)s - 1) g
  JOIN seed_ids p ON p.kind = 'projects' AND p.ord = mod(g, %(nparent)s)
  RETURNING id, project_id)
INSERT INTO seed_ids (kind, ord, id, project_id)
SELECT 'labels', row_number() OVER (ORDER BY id) - 1, id, project_id FROM ins
"""

# Link g joins target r = (g * stride) mod nt with label (r + g / nt) mod nl. With stride coprime
# to nt, g -> r is a bijection within each run of nt links, so every (label, target) pair is
# unique while n <= nl * nt, and the targets spread over issues and merge requests alike.
_LABEL_LINKS = """
INSERT INTO label_links (label_id, target_type, target_id, created_at)
SELECT l.id, CASE WHEN t.ord < %(nissues)s THEN 'Issue' ELSE 'MergeRequest' END, t.id,
       now() - interval '1 minute' * (mod(g::bigint * 7919, 900000))
FROM generate_series(0, %(n)s - 1) g
CROSS JOIN LATERAL (SELECT mod(g::bigint * %(stride)s, %(ntargets)s) AS r) x
JOIN seed_ids t ON t.kind = 'targets' AND t.ord = x.r
JOIN seed_ids l ON l.kind = 'labels' AND l.ord = mod(x.r + g / %(ntargets)s, %(nlabels)s)
"""

_UPLOADS = """
INSERT INTO uploads (project_id, file_key, sha256, size, filename, content_type, uploaded_by, created_at)
SELECT p.id, b.key, b.sha256, b.size, b.filename, b.content_type,
       CASE WHEN mod(b.ord, 7) = 0 THEN NULL ELSE u.id END,
       now() - interval '1 minute' * (mod(b.ord * 7919, 900000))
FROM seed_blobs b
JOIN seed_ids p ON p.kind = 'projects' AND p.ord = mod(b.ord, %(nparent)s)
LEFT JOIN seed_ids u ON u.kind = 'users' AND u.ord = mod(b.ord, %(nusers)s)
WHERE b.kind = 'uploads'
"""

_LFS_OBJECTS = """
INSERT INTO lfs_objects (project_id, oid, file_key, sha256, size, created_at)
SELECT p.id, b.sha256, b.key, b.sha256, b.size, now() - interval '1 minute' * (mod(b.ord * 7919, 900000))
FROM seed_blobs b
JOIN seed_ids p ON p.kind = 'projects' AND p.ord = mod(b.ord, %(nparent)s)
WHERE b.kind = 'lfs_objects'
"""

_CI_PIPELINES = """
WITH ins AS (
  INSERT INTO ci_pipelines (project_id, ref, sha, status, source, variables, duration, created_at, finished_at)
  SELECT p.id, (ARRAY['main', 'main', 'feature/ü', 'v1.0'])[1 + mod(g, 4)],
         md5('pipeline' || g) || substr(md5('x' || g), 1, 8),
         (ARRAY['success', 'success', 'failed', 'running', 'canceled'])[1 + mod(g, 5)],
         CASE WHEN mod(g, 6) = 0 THEN NULL
              ELSE (ARRAY['push', 'web', 'schedule', 'merge_request_event'])[1 + mod(g, 4)] END,
         CASE WHEN mod(g, 3) = 0 THEN NULL ELSE jsonb_build_object('DEPLOY_ENV', 'staging', 'GREETING', 'héllo 🌍') END,
         CASE WHEN mod(g, 5) = 3 THEN NULL ELSE round((random() * 3600)::numeric, 2) END,
         now() - interval '1 minute' * (100 + mod(g::bigint * 7919, 900000)),
         CASE WHEN mod(g, 5) = 3 THEN NULL ELSE now() - interval '1 minute' * (mod(g::bigint * 7919, 100)) END
  FROM generate_series(0, %(n)s - 1) g
  JOIN seed_ids p ON p.kind = 'projects' AND p.ord = mod(g, %(nparent)s)
  RETURNING id, project_id)
INSERT INTO seed_ids (kind, ord, id, project_id)
SELECT 'ci_pipelines', row_number() OVER (ORDER BY id) - 1, id, project_id FROM ins
"""

_CI_BUILDS = """
INSERT INTO ci_builds (pipeline_id, name, stage, status, allow_failure, tags, options, coverage, trace_tail,
                       artifact_key, artifact_sha256, artifact_size, queued_at, started_at, finished_at)
SELECT p.id,
       (ARRAY['rspec', 'jest', 'lint', 'build-image', 'déploiement 🚀'])[1 + mod(g, 5)]
         || ' ' || (1 + mod(g, 4)) || '/4',
       (ARRAY['test', 'test', 'build', 'deploy'])[1 + mod(g, 4)],
       (ARRAY['success', 'success', 'success', 'failed', 'skipped'])[1 + mod(g, 5)],
       mod(g, 9) = 0,
       CASE WHEN mod(g, 4) = 0 THEN NULL
            ELSE ARRAY['docker', CASE WHEN mod(g, 3) = 0 THEN NULL ELSE 'linux' END] END,
       jsonb_build_object('image', 'ruby:3.3', 'script', jsonb_build_array('bundle exec rspec', 'echo ✓'),
                          'retry', mod(g, 3)),
       CASE WHEN mod(g, 4) = 0 THEN NULL ELSE round((random() * 100)::numeric, 2) END,
       CASE WHEN mod(g, 2) = 0
            THEN convert_to('$ make test' || E'\\n' || 'ok ✓ ' || g, 'UTF8') || decode('00', 'hex') END,
       b.key, b.sha256, b.size,
       now() - interval '1 minute' * (20 + mod(g::bigint * 7919, 900000)),
       CASE WHEN mod(g, 5) = 4 THEN NULL ELSE now() - interval '1 minute' * (10 + mod(g::bigint * 7919, 900000)) END,
       CASE WHEN mod(g, 5) = 4 THEN NULL ELSE now() - interval '1 minute' * (mod(g::bigint * 7919, 900000)) END
FROM generate_series(0, %(n)s - 1) g
JOIN seed_ids p ON p.kind = 'ci_pipelines' AND p.ord = mod(g, %(nparent)s)
LEFT JOIN seed_blobs b ON b.kind = 'artifacts' AND b.ord = g
"""


# --- seeding -----------------------------------------------------------------------------------


def _check_schema(conn: psycopg.Connection, cell: str) -> None:
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(format('public.%%I', t)) IS NULL",
        [list(REQUIRED_TABLES)],
    ).fetchall()
    missing = [r[0] for r in rows]
    if not missing:
        return
    if "organizations" in missing:
        raise MigratorError(
            f"cell {cell!r} has no sample schema (table 'organizations' is missing)",
            "run `migrator cells init` first",
        )
    raise MigratorError(
        f"cell {cell!r} does not have the sample schema: missing tables {', '.join(missing)}",
        "the seeder writes only the sample schema; run `migrator cells init` on an empty cell first",
    )


def _seed_shared(conn: psycopg.Connection) -> None:
    """The few cluster-wide users and cell-local settings the sample data refers to (idempotent)."""
    with conn.transaction():
        conn.execute(_USERS, {"n": SEED_USERS})
        conn.execute(_SETTINGS)


def _write_blobs(store, org_id: int, counts: dict[str, int], blob_bytes: int, rng: random.Random,
                 sizes: tuple[int, int] | None = None) -> list[tuple]:
    """Write the organization's blobs; return rows (kind, ord, key, sha256, size, filename, content_type).
    Sizes are uniform in ``sizes`` (inclusive), else between half and one and a half ``blob_bytes``."""
    folders = {"uploads": "uploads", "lfs_objects": "lfs", "artifacts": "artifacts"}
    names = {
        "uploads": ("rapport-été.pdf", "application/pdf"),
        "lfs_objects": ("assets/スクリーンショット.png", "image/png"),
        "artifacts": ("artifacts.zip", "application/zip"),
    }
    written: list[tuple] = []
    try:
        for kind, count in counts.items():
            for ord_ in range(count):
                low, high = sizes or (max(1, blob_bytes // 2), max(1, blob_bytes + blob_bytes // 2))
                data = rng.randbytes(rng.randint(low, high))
                key = f"org-{org_id}/{folders[kind]}/{uuid.UUID(int=rng.getrandbits(128), version=4)}"
                sha, size = store.put_bytes(key, data)
                filename, content_type = names[kind]
                written.append((kind, ord_, key, sha, size, filename, content_type))
    except BaseException:
        store.delete_many(row[2] for row in written)
        raise
    return written


def _insert_org(conn: psycopg.Connection, org_id: int, plan: dict[str, int], blob_rows: list[tuple],
                nusers: int, report: Callable[[str, int], None]) -> None:
    ex = conn.execute
    ex(_TEMP_TABLES)
    ex(_LOAD_USERS)
    if blob_rows:
        cols = list(zip(*blob_rows, strict=True))
        ex(
            "INSERT INTO seed_blobs SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], "
            "%s::bigint[], %s::text[], %s::text[])",
            [list(c) for c in cols],
        )
    ex(_ORGANIZATION, {
        "id": org_id,
        "name": f"Organization {org_id} — café 🚀 日本",
        "path": f"org-{org_id}",
        "description": None if org_id % 2 else f"Sample organization № {org_id}, seeded by cells-migrator",
        "settings": psycopg.types.json.Jsonb({"plan": "ultimate", "region": "eu-west", "locale": "ja_JP",
                                             "features": ["sso", "audit"], "seats": 250}),
    })
    report("organizations", 1)

    nns = plan["namespaces"]
    ntop = max(1, math.ceil(nns / 3))
    ex(_NAMESPACES_TOP, {"org": org_id, "n": ntop})
    if nns > ntop:
        ex(_NAMESPACES_SUB, {"org": org_id, "n": nns - ntop, "ntop": ntop})
    ex(_NAMESPACES_TRAVERSAL, {"org": org_id})
    ex(_NAMESPACES_LOAD, {"org": org_id})
    report("namespaces", nns)

    ex(_PROJECTS, {"n": plan["projects"], "nparent": nns})
    report("projects", plan["projects"])
    np_ = plan["projects"]
    common = {"nparent": np_, "nusers": nusers}
    ex(_ISSUES, {"n": plan["issues"], **common})
    report("issues", plan["issues"])
    ex(_MERGE_REQUESTS, {"n": plan["merge_requests"], **common})
    report("merge_requests", plan["merge_requests"])
    nissues, nmrs = plan["issues"], plan["merge_requests"]
    ex(_TARGETS, {"nissues": nissues})
    ex(_NOTES, {"n": plan["notes"], "nissues": nissues, "nmrs": nmrs, "nusers": nusers})
    report("notes", plan["notes"])
    ex(_LABELS, {"n": plan["labels"], "nparent": np_})
    report("labels", plan["labels"])
    ntargets = nissues + nmrs
    ex(_LABEL_LINKS, {"n": plan["label_links"], "nissues": nissues, "ntargets": ntargets,
                      "nlabels": plan["labels"], "stride": _coprime_stride(ntargets)})
    report("label_links", plan["label_links"])
    ex(_UPLOADS, common)
    report("uploads", plan["uploads"])
    ex(_LFS_OBJECTS, {"nparent": np_})
    report("lfs_objects", plan["lfs_objects"])
    ex(_CI_PIPELINES, {"n": plan["ci_pipelines"], "nparent": np_})
    report("ci_pipelines", plan["ci_pipelines"])
    ex(_CI_BUILDS, {"n": plan["ci_builds"], "nparent": plan["ci_pipelines"]})
    report("ci_builds", plan["ci_builds"])


def _count_rows(conn: psycopg.Connection, org_id: int) -> dict[str, int]:
    """Rows the organization actually has, per table (cheap: used once per seeded organization)."""
    row = conn.execute(
        """
        WITH ns AS (SELECT id FROM namespaces WHERE organization_id = %(org)s),
             pr AS (SELECT id FROM projects WHERE namespace_id IN (SELECT id FROM ns)),
             pl AS (SELECT id FROM ci_pipelines WHERE project_id IN (SELECT id FROM pr)),
             lb AS (SELECT id FROM labels WHERE project_id IN (SELECT id FROM pr))
        SELECT (SELECT count(*) FROM organizations WHERE id = %(org)s),
               (SELECT count(*) FROM ns),
               (SELECT count(*) FROM pr),
               (SELECT count(*) FROM issues WHERE project_id IN (SELECT id FROM pr)),
               (SELECT count(*) FROM merge_requests WHERE project_id IN (SELECT id FROM pr)),
               (SELECT count(*) FROM notes WHERE project_id IN (SELECT id FROM pr)),
               (SELECT count(*) FROM lb),
               (SELECT count(*) FROM label_links WHERE label_id IN (SELECT id FROM lb)),
               (SELECT count(*) FROM uploads WHERE project_id IN (SELECT id FROM pr)),
               (SELECT count(*) FROM lfs_objects WHERE project_id IN (SELECT id FROM pr)),
               (SELECT count(*) FROM pl),
               (SELECT count(*) FROM ci_builds WHERE pipeline_id IN (SELECT id FROM pl))
        """,
        {"org": org_id},
    ).fetchone()
    return dict(zip(ORG_TABLES, row, strict=True))


def seed_organizations(
    settings,
    cell: str,
    *,
    orgs: int = 3,
    rows: int = 10_000,
    blobs: int = 20,
    blob_bytes: int = 4096,
    skew: bool = True,
    seed: int | None = None,
    progress: Progress | None = None,
    blob_sizes: tuple[int, int] | None = None,
) -> list[SeededOrg]:
    """Add ``orgs`` new organizations with their rows and blobs to ``cell``; register their routes.

    ``rows`` is the number of rows per organization before skew; with ``skew`` the sizes follow a
    Zipf-like mix (the first organization is the biggest, the fleet total stays ``orgs * rows``).
    ``blobs`` objects per organization (skewed the same way) of about ``blob_bytes`` bytes each.
    ``seed`` makes the blob contents, keys and random column values reproducible. ``progress`` is
    called as ``progress(description, rows_done)`` after each table of each organization.
    ``blob_sizes``: (smallest, largest) object size in bytes instead of about ``blob_bytes``.
    """
    if orgs < 1:
        raise MigratorError(f"--orgs must be at least 1, not {orgs}", "pass --orgs 1 or more")
    if rows < MIN_ORG_ROWS:
        raise MigratorError(
            f"--rows must be at least {MIN_ORG_ROWS} (one row in every organization table), not {rows}",
            f"pass --rows {MIN_ORG_ROWS} or more",
        )
    if blobs < 0 or blob_bytes < 1:
        raise MigratorError("--blobs must be >= 0 and --blob-bytes >= 1", "pass sensible sizes")


    settings.cell(cell)  # UnknownCell for a name not in the config
    with cell_connection(settings, cell) as conn:
        _check_schema(conn, cell)
        conn.commit()
        store = open_store(settings, cell)
        store.check()
        topology = _topology(settings)
        try:
            cell_info = topology.get_cell(cell)
            return _seed(conn, cell, store, topology, cell_info,
                         sizes=plan_org_sizes(orgs, rows, skew=skew),
                         blob_counts=plan_blob_counts(orgs, blobs, skew=skew),
                         blob_bytes=blob_bytes, seed=seed, progress=progress, blob_sizes=blob_sizes)
        finally:
            close = getattr(topology, "close", None)
            if close is not None:
                close()


def _seed(conn: psycopg.Connection, cell: str, store, topology, cell_info, *, sizes: list[int],
          blob_counts: list[int], blob_bytes: int, seed: int | None, progress: Progress | None,
          blob_sizes: tuple[int, int] | None = None) -> list[SeededOrg]:
    rng = random.Random(seed)
    _seed_shared(conn)
    nusers = conn.execute("SELECT least(count(*), 1000) FROM users").fetchone()[0]
    conn.commit()
    if seed is not None:
        conn.execute("SELECT setseed(%s)", [((seed % 2_000_001) - 1_000_000) / 1_000_000])
        conn.commit()

    results: list[SeededOrg] = []
    for size, nblobs in zip(sizes, blob_counts, strict=True):
        # Blob-owning rows never take more than about half of a small organization.
        split = split_blobs(min(nblobs, max(0, (size - MIN_ORG_ROWS) // 2)))
        plan = plan_tables(size, split)
        org_id = conn.execute("SELECT nextval(pg_get_serial_sequence('organizations', 'id'))").fetchone()[0]
        conn.commit()
        _check_id_range(org_id, cell, cell_info)

        def report(table: str, n: int, _org=org_id) -> None:
            if progress is not None:
                progress(f"org {_org}: {table}", n)

        blob_rows = _write_blobs(store, org_id, split, blob_bytes, rng, blob_sizes)
        try:
            with conn.transaction():
                _insert_org(conn, org_id, plan, blob_rows, nusers, report)
                counts = _count_rows(conn, org_id)
        except BaseException:
            store.delete_many(r[2] for r in blob_rows)
            raise
        result = SeededOrg(org_id, cell, counts, blobs=len(blob_rows), blob_bytes=sum(r[4] for r in blob_rows))
        log.info("seeded organization %s in cell %s: %s rows, %s blobs", org_id, cell, result.rows, result.blobs)
        _register_route(topology, org_id, cell)
        results.append(result)

    # Fresh statistics, so the copier's queries on the new rows get good plans.
    conn.execute("ANALYZE " + ", ".join(ORG_TABLES))  # noqa: S608 - constant table names
    conn.commit()
    return results


def _topology(settings):
    # deferred: the gRPC client is slow to import and only this path needs it
    from migrator.topology.client import topology_client

    return topology_client(settings)


def _check_id_range(org_id: int, cell: str, cell_info) -> None:
    lo, hi = getattr(cell_info, "seq_min", None), getattr(cell_info, "seq_max", None)
    if lo is not None and hi is not None and not lo <= org_id <= hi:
        raise MigratorError(
            f"cell {cell!r} hands out ids outside its range {lo}..{hi} (next organization id {org_id}): "
            "its sequences were not set up",
            "run `migrator cells init` first, so moved rows can keep their ids",
        )


def _register_route(topology, org_id: int, cell: str) -> None:
    try:
        topology.register_route(org_id, cell, actor="seed", reason="seeded")
    except MigratorError as exc:
        raise MigratorError(
            f"organization {org_id} was seeded in cell {cell!r} but its route was not registered: {exc.message}",
            exc.hint or "register it with the Topology Service, then retry",
        ) from None
