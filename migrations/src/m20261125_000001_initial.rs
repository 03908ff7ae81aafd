//! Instances, backups and the job outbox.

const UP: &str = r#"
CREATE TABLE instances (
    id                uuid PRIMARY KEY,
    project_id        text NOT NULL,
    name              text NOT NULL,
    status            text NOT NULL CHECK (status IN ('BUILD', 'ACTIVE', 'ERROR')),
    datastore_type    text NOT NULL,
    datastore_version text NOT NULL,
    flavor_id         text NOT NULL,
    volume_path       text NOT NULL,
    volume_size       integer,
    -- set for an instance created by restoring a backup
    restore_backup_id uuid,
    restore_step      integer,
    restore_steps     integer,
    fail_reason       text,
    -- the worker that owns the running restore, until lease_expires
    lease_owner       text,
    lease_expires     timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    deleted           boolean NOT NULL DEFAULT false,
    created           timestamptz NOT NULL DEFAULT now(),
    updated           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_project ON instances (project_id, created DESC, id DESC) WHERE NOT deleted;
-- two live instances never share a directory
CREATE UNIQUE INDEX instances_volume_path ON instances (volume_path) WHERE NOT deleted;

CREATE TABLE backups (
    id                uuid PRIMARY KEY,
    project_id        text NOT NULL,
    instance_id       uuid NOT NULL REFERENCES instances (id),
    parent_id         uuid REFERENCES backups (id),
    name              text NOT NULL,
    description       text,
    status            text NOT NULL CHECK (status IN
                        ('NEW', 'BUILDING', 'SAVING', 'COMPLETED', 'FAILED', 'DELETING', 'DELETE_FAILED')),
    datastore_type    text NOT NULL,
    datastore_version text NOT NULL,
    -- stored bytes (packs and manifest), known once COMPLETED
    bytes             bigint,
    checksum          text,
    location_ref      text,
    -- the attempt whose objects this backup references
    artifact_prefix   text,
    progress_done     bigint,
    progress_total    bigint,
    fail_reason       text,
    lease_owner       text,
    lease_expires     timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    created           timestamptz NOT NULL DEFAULT now(),
    updated           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX backups_project ON backups (project_id, created DESC, id DESC);
CREATE INDEX backups_instance ON backups (instance_id, status);
CREATE INDEX backups_parent ON backups (parent_id);
-- DESIGN.md §4 rule 3: at most one running backup per instance. A second
-- claim fails on this index and the job waits for the first to finish.
CREATE UNIQUE INDEX backups_one_running_per_instance ON backups (instance_id)
    WHERE status IN ('BUILDING', 'SAVING');

-- Transactional outbox: a job is recorded with its row in one transaction and
-- relayed to RabbitMQ afterwards, so a 202 never depends on the broker.
CREATE TABLE outbox (
    id        bigserial PRIMARY KEY,
    kind      text NOT NULL,
    target_id uuid NOT NULL,
    attempt   integer NOT NULL DEFAULT 0,
    created   timestamptz NOT NULL DEFAULT now()
);
"#;

const DOWN: &str = "DROP TABLE outbox; DROP TABLE backups; DROP TABLE instances;";

sql_migration!(UP, DOWN);
