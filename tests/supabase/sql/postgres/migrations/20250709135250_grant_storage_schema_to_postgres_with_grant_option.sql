-- migrate:up
grant usage on schema storage to postgres with grant option;

-- migrate:down
