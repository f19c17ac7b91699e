-- cells-migrator sample application schema (GitLab-shaped), applied by `migrator cells init`.
--
-- Shape:
--   organizations                      root of the tenant tree (one organization = one tenant)
--     namespaces.organization_id       groups; parent_id points to the parent group (nullable)
--       projects.namespace_id
--         issues, merge_requests, labels, uploads, lfs_objects, ci_pipelines   (project_id)
--         notes.project_id             notes hang on issues/MRs polymorphically
--                                      (noteable_type, noteable_id) with no foreign key
--         label_links.label_id         composite primary key, no id column
--         ci_builds.pipeline_id        no project_id: its sharding key is indirect (via ci_pipelines)
--   application_settings               cell-local: belongs to the cell, never moves
--   users                              cluster-wide: the same everywhere; no foreign keys from
--                                      organization tables (author_id columns are plain bigint)
--
-- Every id is a bigint drawn from a sequence (bigserial), so each cell's sequences can be given a
-- disjoint ID range and rows move between cells with their IDs unchanged. Children reference
-- parents with ON DELETE CASCADE. Every foreign-key / sharding-key column is indexed, because the
-- copier filters on them. Blob-referencing tables (uploads, lfs_objects, ci_builds) store the
-- object's key, sha256 and size. The column types deliberately span what a copier must carry:
-- unicode text, jsonb, text[] (with NULL elements), bytea, numeric, timestamptz, boolean, NULLs.
-- The data dictionary describing these tables is migrator/dictionary/sample.yaml.

-- Cluster-wide ---------------------------------------------------------------------------------

CREATE TABLE users (
    id              bigserial PRIMARY KEY,
    username        text NOT NULL UNIQUE,
    email           text NOT NULL,
    name            text,
    admin           boolean NOT NULL DEFAULT false,
    preferences     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Cell-local -----------------------------------------------------------------------------------

CREATE TABLE application_settings (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    value           jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Organization-scoped --------------------------------------------------------------------------

CREATE TABLE organizations (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    path            text NOT NULL UNIQUE,
    description     text,
    settings        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE namespaces (
    id              bigserial PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    parent_id       bigint REFERENCES namespaces (id) ON DELETE CASCADE,
    name            text NOT NULL,
    path            text NOT NULL,
    type            text NOT NULL DEFAULT 'Group',
    description     text,
    visibility_level integer NOT NULL DEFAULT 0,
    traversal_ids   bigint[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX index_namespaces_on_organization_id ON namespaces (organization_id);
CREATE INDEX index_namespaces_on_parent_id ON namespaces (parent_id);

CREATE TABLE projects (
    id              bigserial PRIMARY KEY,
    namespace_id    bigint NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    name            text NOT NULL,
    path            text NOT NULL,
    description     text,
    archived        boolean NOT NULL DEFAULT false,
    star_count      integer NOT NULL DEFAULT 0,
    topics          text[],
    settings        jsonb NOT NULL DEFAULT '{}'::jsonb,
    storage_cost    numeric(12,2),
    avatar          bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz
);
CREATE INDEX index_projects_on_namespace_id ON projects (namespace_id);

CREATE TABLE issues (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    iid             integer NOT NULL,
    title           text NOT NULL,
    description     text,
    author_id       bigint,
    state           text NOT NULL DEFAULT 'opened',
    confidential    boolean NOT NULL DEFAULT false,
    weight          integer,
    time_estimate   numeric(12,2),
    labels_cache    text[],
    metadata        jsonb,
    due_date        date,
    created_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz
);
CREATE INDEX index_issues_on_project_id ON issues (project_id);
CREATE UNIQUE INDEX index_issues_on_project_id_and_iid ON issues (project_id, iid);

CREATE TABLE merge_requests (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    iid             integer NOT NULL,
    title           text NOT NULL,
    description     text,
    author_id       bigint,
    source_branch   text NOT NULL,
    target_branch   text NOT NULL DEFAULT 'main',
    state           text NOT NULL DEFAULT 'opened',
    draft           boolean NOT NULL DEFAULT false,
    diff_stats      jsonb,
    merge_sha       bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    merged_at       timestamptz
);
CREATE INDEX index_merge_requests_on_project_id ON merge_requests (project_id);
CREATE UNIQUE INDEX index_merge_requests_on_project_id_and_iid ON merge_requests (project_id, iid);

CREATE TABLE notes (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    noteable_type   text NOT NULL,
    noteable_id     bigint NOT NULL,
    author_id       bigint,
    note            text NOT NULL,
    system          boolean NOT NULL DEFAULT false,
    position        jsonb,
    attachment_digest bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz
);
CREATE INDEX index_notes_on_project_id ON notes (project_id);
CREATE INDEX index_notes_on_noteable_type_and_noteable_id ON notes (noteable_type, noteable_id);

CREATE TABLE labels (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    title           text NOT NULL,
    color           text NOT NULL DEFAULT '#6699cc',
    description     text,
    priority        integer,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX index_labels_on_project_id ON labels (project_id);

CREATE TABLE label_links (
    label_id        bigint NOT NULL REFERENCES labels (id) ON DELETE CASCADE,
    target_type     text NOT NULL,
    target_id       bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (label_id, target_type, target_id)
);
CREATE INDEX index_label_links_on_target_type_and_target_id ON label_links (target_type, target_id);

CREATE TABLE uploads (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    file_key        text NOT NULL,
    sha256          text NOT NULL,
    size            bigint NOT NULL,
    filename        text NOT NULL,
    content_type    text,
    uploaded_by     bigint,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX index_uploads_on_project_id ON uploads (project_id);

CREATE TABLE lfs_objects (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    oid             text NOT NULL,
    file_key        text NOT NULL,
    sha256          text NOT NULL,
    size            bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX index_lfs_objects_on_project_id ON lfs_objects (project_id);

CREATE TABLE ci_pipelines (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    ref             text NOT NULL,
    sha             text NOT NULL,
    status          text NOT NULL DEFAULT 'created',
    source          text,
    variables       jsonb,
    duration        numeric(12,2),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX index_ci_pipelines_on_project_id ON ci_pipelines (project_id);

CREATE TABLE ci_builds (
    id              bigserial PRIMARY KEY,
    pipeline_id     bigint NOT NULL REFERENCES ci_pipelines (id) ON DELETE CASCADE,
    name            text NOT NULL,
    stage           text NOT NULL,
    status          text NOT NULL DEFAULT 'pending',
    allow_failure   boolean NOT NULL DEFAULT false,
    tags            text[],
    options         jsonb,
    coverage        numeric(12,2),
    trace_tail      bytea,
    artifact_key    text,
    artifact_sha256 text,
    artifact_size   bigint,
    queued_at       timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX index_ci_builds_on_pipeline_id ON ci_builds (pipeline_id);
