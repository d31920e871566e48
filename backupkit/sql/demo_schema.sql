-- backupkit demo database: the shape of a small Supabase project.
--
-- Run by backupkit.demo_data.create_demo() on an empty database, inside one
-- transaction.  Roles are cluster-wide, so they are created only when missing
-- (and a concurrent creator in another database is tolerated); everything else
-- is per-database and assumes a fresh database.
--
-- What it exercises for a backup tool: uuid, bigint identity (ALWAYS and BY
-- DEFAULT), bigserial, numeric, timestamptz, jsonb, text[], bytea, inet, enums,
-- a STORED generated column, composite primary key, foreign keys with
-- different ON DELETE actions, row-level security with policies, GRANTs to
-- NOLOGIN roles, a SECURITY DEFINER trigger, a view, comments.

-- ---------------------------------------------------------------------------
-- Roles (cluster-wide: create only if missing)
-- ---------------------------------------------------------------------------
DO $roles$
DECLARE
    r text;
    opts text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r);
        -- Supabase's service_role bypasses RLS; only a superuser (or a role
        -- that has BYPASSRLS itself) may grant that, so fall back without it.
        FOREACH opts IN ARRAY CASE WHEN r = 'service_role'
                                   THEN ARRAY['NOLOGIN NOINHERIT BYPASSRLS', 'NOLOGIN NOINHERIT']
                                   ELSE ARRAY['NOLOGIN NOINHERIT'] END LOOP
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', r, opts);
                EXIT;
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    EXIT;  -- created meanwhile by a concurrent create_demo in another database
                WHEN insufficient_privilege THEN
                    IF opts = 'NOLOGIN NOINHERIT' THEN
                        RAISE;
                    END IF;
            END;
        END LOOP;
    END LOOP;
END
$roles$;

-- ---------------------------------------------------------------------------
-- Schemas
-- ---------------------------------------------------------------------------
CREATE SCHEMA auth;
CREATE SCHEMA storage;

GRANT USAGE ON SCHEMA public  TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA auth    TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;

-- ---------------------------------------------------------------------------
-- auth: users and the JWT helper functions used by policies
-- ---------------------------------------------------------------------------
CREATE TABLE auth.users (
    instance_id          uuid,
    id                   uuid PRIMARY KEY,
    aud                  varchar(255),
    role                 varchar(255),
    email                text UNIQUE,
    encrypted_password   text,
    email_confirmed_at   timestamptz,
    last_sign_in_at      timestamptz,
    raw_app_meta_data    jsonb,
    raw_user_meta_data   jsonb,
    is_super_admin       boolean,
    phone                text UNIQUE DEFAULT NULL,
    banned_until         timestamptz,
    is_anonymous         boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz
);
COMMENT ON TABLE auth.users IS 'Auth: stores user login data within a secure schema.';

-- Same definitions as Supabase: the claims come from GUCs set by PostgREST.
CREATE FUNCTION auth.uid() RETURNS uuid
    LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;
COMMENT ON FUNCTION auth.uid() IS 'Deprecated. Use auth.jwt() -> ''sub'' instead.';

CREATE FUNCTION auth.role() RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$$;

CREATE FUNCTION auth.jwt() RETURNS jsonb
    LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;

GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.jwt() TO anon, authenticated, service_role;

-- ---------------------------------------------------------------------------
-- storage: buckets and objects (metadata only; the files live elsewhere)
-- ---------------------------------------------------------------------------
CREATE TABLE storage.buckets (
    id                  text PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    owner               uuid,
    public              boolean NOT NULL DEFAULT false,
    file_size_limit     bigint,
    allowed_mime_types  text[],
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE storage.objects (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bucket_id         text NOT NULL REFERENCES storage.buckets (id),
    name              text NOT NULL,
    owner             uuid,
    metadata          jsonb,
    path_tokens       text[] GENERATED ALWAYS AS (string_to_array(name, '/')) STORED,
    version           text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    last_accessed_at  timestamptz,
    CONSTRAINT objects_bucket_id_name_key UNIQUE (bucket_id, name)
);
CREATE INDEX objects_owner_idx ON storage.objects (owner);

ALTER TABLE storage.buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;

CREATE POLICY "Public buckets are readable" ON storage.buckets
    FOR SELECT TO anon, authenticated USING (public);
CREATE POLICY "Public objects are readable" ON storage.objects
    FOR SELECT TO anon, authenticated
    USING (bucket_id IN (SELECT b.id FROM storage.buckets b WHERE b.public));
CREATE POLICY "Owners manage their objects" ON storage.objects
    FOR ALL TO authenticated
    USING (owner = auth.uid()) WITH CHECK (owner = auth.uid());

GRANT ALL ON ALL TABLES IN SCHEMA storage TO service_role;
GRANT SELECT ON storage.buckets TO anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON storage.objects TO authenticated;
GRANT SELECT ON storage.objects TO anon;

-- ---------------------------------------------------------------------------
-- public: the application
-- ---------------------------------------------------------------------------
CREATE TYPE public.plan_tier AS ENUM ('free', 'pro', 'team', 'enterprise');
CREATE TYPE public.order_status AS ENUM ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded');

CREATE TABLE public.profiles (
    id          uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    username    text NOT NULL UNIQUE CHECK (char_length(username) >= 3),
    full_name   text,
    avatar      bytea,
    tags        text[] NOT NULL DEFAULT '{}',
    settings    jsonb NOT NULL DEFAULT '{}',
    plan        public.plan_tier NOT NULL DEFAULT 'free',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz
);
COMMENT ON TABLE public.profiles IS 'Public profile of each auth.users row (one to one).';
COMMENT ON COLUMN public.profiles.avatar IS 'Small thumbnail, raw image bytes.';

CREATE TABLE public.products (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    name        text NOT NULL,
    price       numeric(12,2) NOT NULL CHECK (price >= 0),
    attributes  jsonb NOT NULL DEFAULT '{}',
    active      boolean NOT NULL DEFAULT true,
    tags        text[],
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_attributes_idx ON public.products USING gin (attributes);

CREATE TABLE public.orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    profile_id  uuid NOT NULL REFERENCES public.profiles (id) ON DELETE RESTRICT,
    status      public.order_status NOT NULL DEFAULT 'pending',
    total       numeric(12,2) NOT NULL DEFAULT 0,
    placed_at   timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz,
    shipping    jsonb,
    note        text
);
CREATE INDEX orders_profile_id_idx ON public.orders (profile_id);
CREATE INDEX orders_placed_at_idx ON public.orders (placed_at);
COMMENT ON TABLE public.orders IS 'Customer orders; total includes the shipping fee.';

CREATE TABLE public.order_items (
    order_id    bigint NOT NULL REFERENCES public.orders (id) ON DELETE CASCADE,
    line_no     integer NOT NULL,
    product_id  bigint NOT NULL REFERENCES public.products (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(12,2) NOT NULL,
    line_total  numeric(12,2) GENERATED ALWAYS AS (quantity * unit_price) STORED,
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX order_items_product_id_idx ON public.order_items (product_id);
COMMENT ON COLUMN public.order_items.line_total IS 'Generated: quantity * unit_price.';

CREATE TABLE public.events (
    id          bigserial PRIMARY KEY,
    profile_id  uuid REFERENCES public.profiles (id) ON DELETE SET NULL,
    kind        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    client_ip   inet,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_profile_id_idx ON public.events (profile_id);
CREATE INDEX events_kind_created_at_idx ON public.events (kind, created_at);

CREATE TABLE public.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name  text NOT NULL,
    record_id   text NOT NULL,
    action      text NOT NULL CHECK (action IN ('INSERT', 'UPDATE', 'DELETE')),
    old_data    jsonb,
    new_data    jsonb,
    changed_by  uuid,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_table_record_idx ON public.audit_log (table_name, record_id);
COMMENT ON TABLE public.audit_log IS 'Changes to orders, written by the audit_row() trigger.';

-- Records only the columns that changed.  changed_at is the row's own
-- updated_at when it has one, so replaying the same traffic gives the same log.
CREATE FUNCTION public.audit_row() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    o jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    n jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    old_diff jsonb;
    new_diff jsonb;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        SELECT jsonb_object_agg(nk.key, ok.value), jsonb_object_agg(nk.key, nk.value)
          INTO old_diff, new_diff
          FROM jsonb_each(n) nk JOIN jsonb_each(o) ok USING (key)
         WHERE nk.value IS DISTINCT FROM ok.value;
        IF new_diff IS NULL THEN
            RETURN NULL;  -- nothing changed
        END IF;
    ELSE
        old_diff := o;
        new_diff := n;
    END IF;
    INSERT INTO public.audit_log (table_name, record_id, action, old_data, new_data, changed_by, changed_at)
    VALUES (TG_TABLE_NAME, coalesce(n, o) ->> 'id', TG_OP, old_diff, new_diff, auth.uid(),
            coalesce((n ->> 'updated_at')::timestamptz, now()));
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_audit
    AFTER UPDATE OR DELETE ON public.orders
    FOR EACH ROW EXECUTE FUNCTION public.audit_row();

CREATE VIEW public.product_sales WITH (security_invoker = true) AS
SELECT p.id AS product_id, p.sku, count(*) AS lines, sum(i.quantity) AS units, sum(i.line_total) AS revenue
  FROM public.products p
  JOIN public.order_items i ON i.product_id = p.id
 GROUP BY p.id, p.sku;

-- Row-level security on every public table --------------------------------
ALTER TABLE public.profiles    ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.products    ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders      ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.order_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.events      ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.audit_log   ENABLE ROW LEVEL SECURITY;

CREATE POLICY "Profiles are viewable by everyone" ON public.profiles
    FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY "Users update their own profile" ON public.profiles
    FOR UPDATE TO authenticated USING (auth.uid() = id) WITH CHECK (auth.uid() = id);

CREATE POLICY "Active products are public" ON public.products
    FOR SELECT TO anon, authenticated USING (active);

CREATE POLICY "Users see their own orders" ON public.orders
    FOR SELECT TO authenticated USING (profile_id = auth.uid());
CREATE POLICY "Users place their own orders" ON public.orders
    FOR INSERT TO authenticated WITH CHECK (profile_id = auth.uid());

CREATE POLICY "Users see items of their orders" ON public.order_items
    FOR SELECT TO authenticated
    USING (EXISTS (SELECT 1 FROM public.orders o WHERE o.id = order_id AND o.profile_id = auth.uid()));

CREATE POLICY "Users log their own events" ON public.events
    FOR INSERT TO authenticated WITH CHECK (profile_id = auth.uid());
-- audit_log: no policies, so only service_role (BYPASSRLS) and owners read it.

-- Supabase's default grants: table access is wide open, RLS does the filtering.
GRANT ALL ON ALL TABLES    IN SCHEMA public TO anon, authenticated, service_role;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO anon, authenticated, service_role;
GRANT ALL ON ALL FUNCTIONS IN SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES    TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
