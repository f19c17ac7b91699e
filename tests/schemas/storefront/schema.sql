-- Storefront: a small multi-tenant e-commerce SaaS, the second schema of the test suite.
--
-- Nothing here comes from cells-migrator: this is what the application's own migrations would
-- have created in each of its cells, before anyone thought of moving tenants between them. The
-- tests adopt cells built by this script (and data.sql) with `migrator cells init` in adopt mode.
-- Its data dictionary is dictionary.yaml next to this file.
--
-- Shape (-> is the sharding key, leading to the tenant):
--   tenants                          root; key tenant_id, GENERATED ALWAYS identity
--     accounts.tenant_id             users of a tenant; uuid key; a generated column
--       api_keys.account_id          bytea key (the digest of the key); sharding key through a uuid
--     stores.tenant_id               text key (the store's handle)
--       customers.store_handle       two hops
--         orders.customer_id         three hops; identity ALWAYS key; enums, arrays, interval, inet
--           line_items.order_id      four hops; composite key (order_id, line_no); generated column
--     notes.order_id | notes.store_handle   alternative sharding keys: exactly one is set per row
--     attachments.uploaded_by        sharding key through a uuid; polymorphic (record_type, record_id)
--                                    without a foreign key; blobs; an identity ALWAYS non-key column
--     activity.tenant_id             declaratively partitioned by occurred_at; key (activity_id,
--                                    occurred_at); polymorphic subject without a foreign key
--   currencies                       cluster-wide reference data (the same in every cell)
--   schema_migrations, job_queue     cell-local: the cell's own bookkeeping, never moved

CREATE TYPE plan_tier AS ENUM ('free', 'growth', 'enterprise');
CREATE TYPE order_status AS ENUM ('cart', 'placed', 'paid', 'shipped', 'cancelled');

-- Cluster-wide ---------------------------------------------------------------------------------

CREATE TABLE currencies (
    code            char(3) PRIMARY KEY,
    name            text NOT NULL,
    minor_units     smallint NOT NULL
);

-- Cell-local -----------------------------------------------------------------------------------

CREATE TABLE schema_migrations (
    version         text PRIMARY KEY,
    applied_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE job_queue (
    job_id          bigserial PRIMARY KEY,
    kind            text NOT NULL,
    payload         jsonb,
    run_at          timestamptz NOT NULL DEFAULT now()
);

-- Tenant data ----------------------------------------------------------------------------------

CREATE TABLE tenants (
    tenant_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug            text NOT NULL UNIQUE,
    display_name    text NOT NULL,
    plan            plan_tier NOT NULL DEFAULT 'free',
    settings        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    account_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    email           text NOT NULL,
    email_normalized text GENERATED ALWAYS AS (lower(btrim(email))) STORED,
    roles           text[] NOT NULL DEFAULT '{}',
    last_login_ip   inet,
    last_login_at   timestamptz,
    session_timeout interval,
    UNIQUE (tenant_id, email)
);

CREATE TABLE api_keys (
    key_digest      bytea PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    label           text,
    scopes          text[],
    expires_at      timestamptz
);
CREATE INDEX api_keys_account_id ON api_keys (account_id);

CREATE TABLE stores (
    store_handle    text PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name            text NOT NULL,
    currency        char(3) NOT NULL REFERENCES currencies,
    opened_on       date,
    tax_rate        numeric(6, 4),
    logo            bytea
);
CREATE INDEX stores_tenant_id ON stores (tenant_id);

CREATE TABLE customers (
    customer_id     bigserial PRIMARY KEY,
    store_handle    text NOT NULL REFERENCES stores ON DELETE CASCADE,
    full_name       text,
    birthday        date,
    marketing_opt_in boolean,
    rating          double precision,
    lifetime_value  numeric,
    preferences     jsonb,
    created_at      timestamp without time zone
);
CREATE INDEX customers_store_handle ON customers (store_handle);

CREATE TABLE orders (
    order_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id     bigint NOT NULL REFERENCES customers ON DELETE CASCADE,
    status          order_status NOT NULL DEFAULT 'cart',
    status_history  order_status[],
    total           numeric(14, 2),
    discount_codes  text[],
    shipping_address jsonb,
    placed_at       timestamptz,
    local_placed_at timestamp without time zone,
    delivery_window interval,
    client_ip       inet,
    external_ref    uuid,
    gift_note       text
);
CREATE INDEX orders_customer_id ON orders (customer_id);

CREATE TABLE line_items (
    order_id        bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
    line_no         integer NOT NULL,
    sku             text NOT NULL,
    quantity        integer NOT NULL,
    unit_price      numeric(12, 4) NOT NULL,
    line_total      numeric GENERATED ALWAYS AS (quantity * unit_price) STORED,
    tax_rates       numeric[],
    attributes      jsonb,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE notes (
    note_id         bigserial PRIMARY KEY,
    order_id        bigint REFERENCES orders ON DELETE CASCADE,
    store_handle    text REFERENCES stores ON DELETE CASCADE,
    author_id       uuid REFERENCES accounts ON DELETE SET NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notes_one_parent CHECK (num_nonnulls(order_id, store_handle) = 1)
);
CREATE INDEX notes_order_id ON notes (order_id);
CREATE INDEX notes_store_handle ON notes (store_handle);

CREATE TABLE attachments (
    attachment_id   uuid PRIMARY KEY,
    display_no      bigint GENERATED ALWAYS AS IDENTITY,
    uploaded_by     uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    record_type     text NOT NULL,
    record_id       text NOT NULL,
    filename        text NOT NULL,
    content_type    text,
    blob_key        text,
    blob_sha256     text,
    byte_size       bigint,
    preview         bytea,
    uploaded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_uploaded_by ON attachments (uploaded_by);

CREATE TABLE activity (
    activity_id     bigint GENERATED BY DEFAULT AS IDENTITY,
    tenant_id       bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    occurred_at     timestamptz NOT NULL,
    actor_id        uuid,
    subject_type    text,
    subject_id      text,
    action          text NOT NULL,
    details         jsonb,
    PRIMARY KEY (activity_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE activity_2024 PARTITION OF activity FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE activity_2025 PARTITION OF activity FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE activity_default PARTITION OF activity DEFAULT;
CREATE INDEX activity_tenant_id ON activity (tenant_id);

-- Reference data and the application's own bookkeeping -----------------------------------------

INSERT INTO currencies (code, name, minor_units) VALUES
    ('EUR', 'Euro', 2), ('USD', 'US Dollar', 2), ('JPY', 'Yen', 0);
INSERT INTO schema_migrations (version) VALUES ('20240101000000'), ('20240315120000'), ('20250102093000');
