//! API tokens: each one scopes its bearer to a project (or, for an admin
//! token, lets it read across projects). Only a BLAKE3 hash of the secret
//! is stored, so a copy of the database does not hand out working tokens.

const UP: &str = r#"
CREATE TABLE auth_tokens (
    id          uuid PRIMARY KEY,
    project_id  text NOT NULL,
    admin       boolean NOT NULL DEFAULT false,
    -- hex BLAKE3 of the secret part of `cairn-<id>-<secret>`
    secret_hash text NOT NULL CHECK (length(secret_hash) = 64),
    description text,
    created     timestamptz NOT NULL DEFAULT now(),
    -- set once; a revoked token is refused (401) from then on
    revoked_at  timestamptz
);
CREATE INDEX auth_tokens_project ON auth_tokens (project_id, created);
"#;

const DOWN: &str = r#"
DROP TABLE auth_tokens;
"#;

sql_migration!(UP, DOWN);
