-- migrate:up
grant create on database postgres to supabase_auth_admin;

-- migrate:down
