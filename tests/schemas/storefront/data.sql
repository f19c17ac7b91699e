-- Storefront: the data a cell holds after the application ran for a while (run once, after schema.sql).
--
-- Plain SQL, deterministic (no random()): running it on two fresh databases with the same settings
-- gives the same rows. Settings (session variables; e.g. PGOPTIONS='-c storefront.id_base=1000'
-- with psql, or SET before running the script):
--   storefront.id_base              the cell's ID plan: every sequence of the cell starts at id_base + 1
--                                   (default 0), so cells of the fleet hand out disjoint IDs
--   storefront.tenants              tenants to create (default 2)
--   storefront.orders_per_customer  orders per customer (default 2)
-- Attachment objects are not written here (SQL cannot write to object storage): their bytes are
-- repeat('storefront ' || blob_key || E'\n', 16), and blob_sha256 / byte_size describe them.

DO $$
DECLARE
    base bigint := coalesce(nullif(current_setting('storefront.id_base', true), ''), '0')::bigint;
    seq record;
BEGIN
    FOR seq IN SELECT sequencename FROM pg_catalog.pg_sequences WHERE schemaname = 'public' LOOP
        EXECUTE format('ALTER SEQUENCE public.%I RESTART WITH %s', seq.sequencename, base + 1);
    END LOOP;
END
$$;

CREATE TEMP TABLE storefront_settings AS
SELECT coalesce(nullif(current_setting('storefront.id_base', true), ''), '0')::bigint AS id_base,
       coalesce(nullif(current_setting('storefront.tenants', true), ''), '2')::int AS tenants,
       coalesce(nullif(current_setting('storefront.orders_per_customer', true), ''), '2')::int AS orders_per_customer;

INSERT INTO tenants (slug, display_name, plan, settings, created_at)
SELECT 'shop-' || s.id_base || '-' || g,
       CASE g % 3 WHEN 0 THEN 'Zoë''s Bücher & Café' WHEN 1 THEN 'ACME "Wholesale"' ELSE 'Tienda Ñandú' END,
       (ARRAY['free', 'growth', 'enterprise']::plan_tier[])[1 + g % 3],
       jsonb_build_object('theme', 'dark', 'limits', jsonb_build_object('stores', g * 2), 'beta', g % 2 = 0,
                          'tags', jsonb_build_array('a', NULL, 1.5)),
       timestamptz '2023-01-01 00:00:00+00' + g * interval '17 days 3 hours'
FROM storefront_settings s, generate_series(1, s.tenants) AS g
ORDER BY g;

INSERT INTO accounts (account_id, tenant_id, email, roles, last_login_ip, last_login_at, session_timeout)
SELECT md5('account:' || t.tenant_id || ':' || g)::uuid,
       t.tenant_id,
       CASE WHEN g = 1 THEN '  Owner.' || t.tenant_id || '@Example.COM ' ELSE 'user' || g || '.' || t.tenant_id || '@example.com' END,
       CASE g % 3 WHEN 0 THEN ARRAY['admin', NULL, 'billing'] WHEN 1 THEN ARRAY['member'] ELSE '{}'::text[] END,
       CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN inet '192.0.2.17' WHEN 2 THEN inet '2001:db8::1/64'
                  ELSE ('10.' || t.tenant_id % 250 || '.0.' || g)::inet END,
       CASE WHEN g % 4 = 0 THEN NULL ELSE timestamptz '2025-06-30 23:59:59.123456+02' - g * interval '1 day' END,
       CASE g % 3 WHEN 0 THEN NULL WHEN 1 THEN interval '1 hour 30 minutes' ELSE interval '2 days -3 seconds' END
FROM tenants t, generate_series(1, 5) AS g;

INSERT INTO api_keys (key_digest, account_id, label, scopes, expires_at)
SELECT sha256(convert_to('api-key:' || a.account_id || ':' || g, 'UTF8')), a.account_id,
       CASE WHEN g = 1 THEN 'CI' END, ARRAY['read', CASE WHEN g = 2 THEN 'write' END],
       CASE WHEN g = 2 THEN timestamptz '2030-01-01 00:00:00+00' END
FROM accounts a, generate_series(1, 2) AS g;

INSERT INTO stores (store_handle, tenant_id, name, currency, opened_on, tax_rate, logo)
SELECT 't' || t.tenant_id || '-store-' || g,
       t.tenant_id,
       'Store ' || g || ' of ' || t.display_name,
       (ARRAY['EUR', 'USD', 'JPY'])[1 + (t.tenant_id + g) % 3],
       CASE WHEN g = 2 THEN NULL ELSE date '2020-02-29' + (t.tenant_id % 1000)::int END,
       CASE WHEN g = 2 THEN NULL ELSE 0.1925 END,
       CASE WHEN g = 2 THEN NULL ELSE decode(md5('logo' || t.tenant_id) || '00ff', 'hex') END
FROM tenants t, generate_series(1, 2) AS g;

INSERT INTO customers (store_handle, full_name, birthday, marketing_opt_in, rating, lifetime_value, preferences,
                       created_at)
SELECT st.store_handle,
       CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN 'Zoë O''Brien' WHEN 2 THEN 'Ñandú "Nandu" Pérez'
                  WHEN 3 THEN E'Back\\slash\tTab' ELSE 'Customer ' || g END,
       CASE WHEN g % 4 = 0 THEN NULL ELSE date '1970-01-01' + g * 397 END,
       CASE g % 3 WHEN 0 THEN NULL WHEN 1 THEN true ELSE false END,
       CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN 1.0 / 3 WHEN 2 THEN 4.25 ELSE 1e-7 END,
       CASE WHEN g % 6 = 0 THEN NULL ELSE 1234.56789012345678901234567890 * g END,
       CASE WHEN g % 2 = 0 THEN NULL ELSE jsonb_build_object('newsletter', g % 3 = 0, 'sizes', jsonb_build_array('M', 'L')) END,
       timestamp '2024-02-29 12:34:56.789' + g * interval '1 day 1 hour'
FROM stores st, generate_series(1, 10) AS g
ORDER BY st.store_handle, g;

INSERT INTO orders (customer_id, status, status_history, total, discount_codes, shipping_address, placed_at,
                    local_placed_at, delivery_window, client_ip, external_ref, gift_note)
SELECT c.customer_id,
       (ARRAY['cart', 'placed', 'paid', 'shipped', 'cancelled']::order_status[])[1 + (c.customer_id + g) % 5],
       CASE (c.customer_id + g) % 3 WHEN 0 THEN NULL WHEN 1 THEN ARRAY['cart', 'placed']::order_status[]
                                    ELSE ARRAY['cart', NULL, 'paid']::order_status[] END,
       round((c.customer_id % 997) * 3.17 + g, 2),
       CASE g % 3 WHEN 0 THEN NULL WHEN 1 THEN ARRAY['WELCOME10', NULL] ELSE ARRAY['']::text[] END,
       jsonb_build_object('street', 'Hauptstraße ' || g, 'zip', '1010', 'geo', jsonb_build_array(48.2, 16.37),
                          'note', NULL),
       CASE WHEN g = 1 THEN timestamptz '2024-12-31 23:30:00-05' + (c.customer_id % 50) * interval '1 minute' END,
       timestamp '2024-12-31 23:30:00' + g * interval '1 second',
       CASE g % 3 WHEN 0 THEN NULL WHEN 1 THEN interval '3 days 04:05:06' ELSE interval '1 mon -1 day' END,
       CASE g % 2 WHEN 0 THEN inet '198.51.100.7' ELSE inet '2001:db8:85a3::8a2e:370:7334' END,
       CASE WHEN g % 2 = 0 THEN md5('order-ref' || c.customer_id || ':' || g)::uuid END,
       CASE WHEN (c.customer_id + g) % 7 = 0 THEN E'Happy birthday!\nLine two, "quoted", \\ and a tab\t.' END
FROM customers c, storefront_settings s, generate_series(1, s.orders_per_customer) AS g
ORDER BY c.customer_id, g;

INSERT INTO line_items (order_id, line_no, sku, quantity, unit_price, tax_rates, attributes)
SELECT o.order_id, n,
       'SKU-' || lpad(((o.order_id * 7 + n) % 10000)::text, 4, '0'),
       1 + (o.order_id + n) % 5,
       round(((o.order_id * 13 + n * 7) % 10000) / 100.0 + 0.0049, 4),
       CASE n % 3 WHEN 0 THEN NULL WHEN 1 THEN ARRAY[0.2, NULL, 0.055] ELSE ARRAY[]::numeric[] END,
       CASE WHEN n % 2 = 0 THEN jsonb_build_object('color', 'blue', 'gift_wrap', true) END
FROM orders o, generate_series(1, 1 + (o.order_id % 4)::int) AS n
ORDER BY o.order_id, n;

-- Notes: on every third order, and two on each store; never on both.
INSERT INTO notes (order_id, store_handle, author_id, body, created_at)
SELECT o.order_id, NULL,
       CASE WHEN o.order_id % 2 = 0 THEN md5('account:' || st.tenant_id || ':' || (1 + o.order_id % 5))::uuid END,
       'Order note ' || o.order_id, timestamptz '2025-01-15 08:00:00+00' + o.order_id % 100 * interval '1 hour'
FROM orders o JOIN customers c USING (customer_id) JOIN stores st USING (store_handle)
WHERE o.order_id % 3 = 0
ORDER BY o.order_id;

INSERT INTO notes (order_id, store_handle, author_id, body, created_at)
SELECT NULL, st.store_handle, md5('account:' || st.tenant_id || ':' || g)::uuid,
       'Store note ' || g || E' \u00e9', timestamptz '2025-02-01 00:00:00+00' + g * interval '1 day'
FROM stores st, generate_series(1, 2) AS g
ORDER BY st.store_handle, g;

-- Attachments: polymorphic (record_type, record_id), one of them purged (no object).
INSERT INTO attachments (attachment_id, uploaded_by, record_type, record_id, filename, content_type, blob_key,
                         blob_sha256, byte_size, preview, uploaded_at)
SELECT a.attachment_id, a.uploaded_by, a.record_type, a.record_id, a.filename, a.content_type, a.blob_key,
       CASE WHEN a.blob_key IS NOT NULL THEN
           encode(sha256(convert_to(repeat('storefront ' || a.blob_key || E'\n', 16), 'UTF8')), 'hex') END,
       CASE WHEN a.blob_key IS NOT NULL THEN
           octet_length(convert_to(repeat('storefront ' || a.blob_key || E'\n', 16), 'UTF8')) END,
       a.preview, a.uploaded_at
FROM (
    SELECT md5('attachment:' || t.tenant_id || ':' || g)::uuid AS attachment_id,
           md5('account:' || t.tenant_id || ':' || (1 + g % 5))::uuid AS uploaded_by,
           (ARRAY['Order', 'Store', 'Note'])[1 + g % 3] AS record_type,
           CASE g % 3 WHEN 0 THEN (SELECT min(o.order_id) FROM orders o JOIN customers c USING (customer_id)
                                   JOIN stores st USING (store_handle) WHERE st.tenant_id = t.tenant_id)::text
                      WHEN 1 THEN 't' || t.tenant_id || '-store-1'
                      ELSE (SELECT min(n.note_id) FROM notes n WHERE n.store_handle = 't' || t.tenant_id || '-store-2')::text
           END AS record_id,
           'file-' || g || CASE g % 2 WHEN 0 THEN '.pdf' ELSE '.png' END AS filename,
           CASE g % 2 WHEN 0 THEN 'application/pdf' ELSE 'image/png' END AS content_type,
           CASE WHEN g = 6 THEN NULL ELSE 'attachments/' || t.tenant_id || '/' || md5('attachment:' || t.tenant_id || ':' || g) END
               AS blob_key,
           CASE WHEN g % 2 = 1 THEN decode('89504e470d0a1a0a' || md5(g::text), 'hex') END AS preview,
           timestamptz '2025-03-01 10:00:00+01' + g * interval '1 hour' AS uploaded_at
    FROM tenants t, generate_series(1, 6) AS g
) a
ORDER BY a.attachment_id;

-- Activity: spread over the 2024 and 2025 partitions and the default one (2026 on).
INSERT INTO activity (tenant_id, occurred_at, actor_id, subject_type, subject_id, action, details)
SELECT t.tenant_id,
       timestamptz '2024-03-01 00:00:00+00' + g * interval '29 days 7 hours',
       CASE WHEN g % 4 = 0 THEN NULL ELSE md5('account:' || t.tenant_id || ':' || (1 + g % 5))::uuid END,
       CASE g % 3 WHEN 0 THEN 'Order' WHEN 1 THEN 'Store' END,
       CASE g % 3 WHEN 0 THEN g::text WHEN 1 THEN 't' || t.tenant_id || '-store-1' END,
       (ARRAY['created', 'updated', 'deleted', 'login'])[1 + g % 4],
       CASE WHEN g % 5 = 0 THEN NULL ELSE jsonb_build_object('seq', g, 'ok', true) END
FROM tenants t, generate_series(1, 30) AS g
ORDER BY t.tenant_id, g;

INSERT INTO job_queue (kind, payload) VALUES ('reindex', '{"all": true}'), ('digest', NULL);

DROP TABLE storefront_settings;
