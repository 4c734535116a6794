-- The definitions of the named pools a poolplane server hosts. The registry and
-- this table change together, in one transaction.
CREATE TABLE pool_definitions (
    name         text PRIMARY KEY
                 CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- The pool's database as given (postgres:// URL or key=value conninfo). It
    -- holds the password: never select it into a response without redacting it.
    database_url text        NOT NULL,
    -- The AdvancedPoolConfig fields that were set explicitly, as JSON.
    config       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
