-- migrate:up
alter role supabase_auth_admin nocreaterole;

-- migrate:down
