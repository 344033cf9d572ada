//! Embedded schema migrations, applied in order in one transaction (on PostgreSQL under an
//! advisory lock, so concurrent starts migrate once).
//!
//! Portable SQL only (SQLite and PostgreSQL): TEXT and BIGINT columns, explicit primary keys,
//! JSON kept as TEXT. Never edit a released migration; add the next one.

use crate::db::{Transaction, params};

pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE access_keys (
    id TEXT PRIMARY KEY, secret TEXT NOT NULL, kind TEXT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE things (
    name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, thing_type TEXT,
    attributes TEXT NOT NULL, version BIGINT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE thing_groups (
    name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, parent TEXT REFERENCES thing_groups (name),
    description TEXT, attributes TEXT NOT NULL, query TEXT, version BIGINT NOT NULL,
    created_at BIGINT NOT NULL);
CREATE TABLE thing_group_members (
    group_name TEXT NOT NULL REFERENCES thing_groups (name),
    thing_name TEXT NOT NULL REFERENCES things (name),
    PRIMARY KEY (group_name, thing_name));
CREATE INDEX thing_group_members_thing ON thing_group_members (thing_name);
CREATE TABLE certificates (
    id TEXT PRIMARY KEY, pem TEXT NOT NULL, status TEXT NOT NULL, ca_id TEXT,
    not_before BIGINT, not_after BIGINT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE policies (
    name TEXT PRIMARY KEY, default_version BIGINT NOT NULL, generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE policy_versions (
    policy_name TEXT NOT NULL REFERENCES policies (name), version BIGINT NOT NULL,
    document TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (policy_name, version));
CREATE TABLE thing_principals (
    thing_name TEXT NOT NULL REFERENCES things (name), principal TEXT NOT NULL,
    exclusive BIGINT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (thing_name, principal));
CREATE INDEX thing_principals_principal ON thing_principals (principal);
CREATE TABLE policy_targets (
    policy_name TEXT NOT NULL REFERENCES policies (name), target TEXT NOT NULL,
    PRIMARY KEY (policy_name, target));
CREATE INDEX policy_targets_target ON policy_targets (target);
CREATE TABLE role_aliases (
    name TEXT PRIMARY KEY, role_arn TEXT NOT NULL, duration_seconds BIGINT NOT NULL,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY, at BIGINT NOT NULL, who TEXT NOT NULL, operation TEXT NOT NULL,
    resource TEXT NOT NULL);
"#,
    r#"
CREATE TABLE provisioning_templates (
    name TEXT PRIMARY KEY, description TEXT, body TEXT NOT NULL, enabled BIGINT NOT NULL,
    role_arn TEXT NOT NULL, hook TEXT, kind TEXT NOT NULL, created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL);
"#,
    r#"
CREATE TABLE thing_types (
    name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, description TEXT,
    searchable_attributes TEXT NOT NULL, deprecated BIGINT NOT NULL, deprecated_at BIGINT,
    created_at BIGINT NOT NULL);
"#,
    r#"
CREATE TABLE role_policies (
    role_arn TEXT PRIMARY KEY, document TEXT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE temporary_credentials (
    access_key_id TEXT PRIMARY KEY, secret TEXT NOT NULL, token_sha256 TEXT NOT NULL,
    role_arn TEXT NOT NULL, role_alias TEXT NOT NULL, thing_name TEXT NOT NULL,
    certificate_id TEXT NOT NULL, expires_at BIGINT NOT NULL, created_at BIGINT NOT NULL);
CREATE INDEX temporary_credentials_expiry ON temporary_credentials (expires_at);
"#,
    r#"
CREATE TABLE shadows (
    thing_name TEXT NOT NULL, shadow_name TEXT NOT NULL, document TEXT, version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL, PRIMARY KEY (thing_name, shadow_name));
"#,
    r#"
CREATE TABLE component_versions (
    name TEXT NOT NULL, version TEXT NOT NULL, recipe TEXT NOT NULL, recipe_format TEXT NOT NULL,
    description TEXT, publisher TEXT, platforms TEXT NOT NULL, status TEXT NOT NULL,
    message TEXT NOT NULL, signature TEXT, tags TEXT NOT NULL, client_token TEXT,
    created_at BIGINT NOT NULL, PRIMARY KEY (name, version));
"#,
    r#"
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, namespace TEXT, status TEXT NOT NULL, continuous BIGINT NOT NULL,
    body TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE job_executions (
    job_id TEXT NOT NULL REFERENCES jobs (id), thing_name TEXT NOT NULL, status TEXT NOT NULL,
    status_details TEXT NOT NULL, version BIGINT NOT NULL, execution_number BIGINT NOT NULL,
    queued_at BIGINT NOT NULL, started_at BIGINT, updated_at BIGINT NOT NULL,
    released BIGINT NOT NULL, timeout_at BIGINT, force_canceled BIGINT NOT NULL,
    PRIMARY KEY (job_id, thing_name));
CREATE INDEX job_executions_thing ON job_executions (thing_name);
CREATE INDEX job_executions_timeout ON job_executions (timeout_at);
"#,
    // Greengrass deployments (one latest revision per target), core devices and what their
    // fleet status reports, and each device's view of the deployments that reach it.
    r#"
CREATE TABLE gg_deployments (
    id TEXT PRIMARY KEY, target_arn TEXT NOT NULL, revision BIGINT NOT NULL, name TEXT,
    status TEXT NOT NULL, spec TEXT NOT NULL, job_id TEXT, is_latest BIGINT NOT NULL,
    parent_target_arn TEXT, rollback_of TEXT, client_token TEXT,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, UNIQUE (target_arn, revision));
CREATE INDEX gg_deployments_job ON gg_deployments (job_id);
CREATE TABLE gg_core_devices (
    thing_name TEXT PRIMARY KEY, status TEXT NOT NULL, platform TEXT, architecture TEXT,
    core_version TEXT, runtime TEXT, sequence_number BIGINT NOT NULL,
    last_status_update BIGINT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE gg_installed_components (
    thing_name TEXT NOT NULL, component_name TEXT NOT NULL, version TEXT NOT NULL,
    lifecycle_state TEXT NOT NULL, state_details TEXT, status_codes TEXT NOT NULL,
    is_root BIGINT NOT NULL, config_arns TEXT NOT NULL, last_status_change BIGINT NOT NULL,
    last_reported BIGINT NOT NULL, running_since BIGINT,
    PRIMARY KEY (thing_name, component_name));
CREATE TABLE gg_effective_deployments (
    thing_name TEXT NOT NULL, deployment_id TEXT NOT NULL, execution_status TEXT NOT NULL,
    device_status TEXT NOT NULL, reason TEXT, status_details TEXT NOT NULL,
    created_at BIGINT NOT NULL, modified_at BIGINT NOT NULL, device_succeeded_at BIGINT,
    PRIMARY KEY (thing_name, deployment_id));
CREATE INDEX gg_effective_deployments_deployment ON gg_effective_deployments (deployment_id);
"#,
    r#"
CREATE TABLE secrets (
    name TEXT PRIMARY KEY, arn TEXT NOT NULL UNIQUE, description TEXT,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, deleted_at BIGINT);
CREATE TABLE secret_versions (
    secret_name TEXT NOT NULL REFERENCES secrets (name), version_id TEXT NOT NULL,
    secret_string TEXT, secret_binary TEXT, stages TEXT NOT NULL, created_at BIGINT NOT NULL,
    PRIMARY KEY (secret_name, version_id));
"#,
    r#"
CREATE TABLE device_presence (
    client_id TEXT PRIMARY KEY, thing_name TEXT, certificate_id TEXT NOT NULL,
    session_id TEXT NOT NULL, connected BIGINT NOT NULL, last_connected BIGINT NOT NULL,
    last_disconnected BIGINT, disconnect_reason TEXT);
CREATE INDEX device_presence_thing ON device_presence (thing_name);
"#,
    r#"
CREATE TABLE log_groups (
    name TEXT PRIMARY KEY, created_at BIGINT NOT NULL, retention_days BIGINT);
CREATE TABLE log_streams (
    group_name TEXT NOT NULL, name TEXT NOT NULL, created_at BIGINT NOT NULL,
    first_event BIGINT, last_event BIGINT, last_ingestion BIGINT,
    next_seq BIGINT NOT NULL, stored_bytes BIGINT NOT NULL,
    PRIMARY KEY (group_name, name));
CREATE TABLE log_events (
    group_name TEXT NOT NULL, stream_name TEXT NOT NULL, seq BIGINT NOT NULL,
    timestamp BIGINT NOT NULL, ingestion_time BIGINT NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (group_name, stream_name, seq));
CREATE INDEX log_events_time ON log_events (group_name, timestamp);
"#,
    r#"
CREATE TABLE defender_reports (
    thing_name TEXT NOT NULL, report_id BIGINT NOT NULL, received_at BIGINT NOT NULL,
    document TEXT NOT NULL, violations TEXT NOT NULL,
    PRIMARY KEY (thing_name, report_id));
"#,
    // Users with roles and console sessions; access keys belong to a user (the existing
    // administrator key to the user `admin`, whose password `lichen fleet serve` sets).
    r#"
CREATE TABLE users (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE user_sessions (
    token_sha256 TEXT PRIMARY KEY, user_name TEXT NOT NULL REFERENCES users (name),
    csrf_token TEXT NOT NULL, expires_at BIGINT NOT NULL, created_at BIGINT NOT NULL);
CREATE INDEX user_sessions_user ON user_sessions (user_name);
ALTER TABLE access_keys ADD COLUMN user_name TEXT REFERENCES users (name);
CREATE INDEX access_keys_user ON access_keys (user_name);
INSERT INTO users (name, password_hash, role, created_at, updated_at)
    SELECT 'admin', '', 'admin', MIN(created_at), MIN(created_at) FROM access_keys
    WHERE kind = 'admin' HAVING COUNT(*) > 0;
UPDATE access_keys SET user_name = 'admin' WHERE kind = 'admin';
"#,
];

pub(crate) fn apply(tx: &Transaction<'_>) -> crate::Result<()> {
    if let Transaction::Pg(_) = tx {
        // Processes starting at once on a fresh database: one migrates, the others wait.
        tx.query_row("SELECT pg_advisory_xact_lock(7366231)", [], |_| Ok(()))?;
    }
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        [],
    )?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        let done: i64 = tx.query_row(
            "SELECT COUNT(*) FROM schema_migrations WHERE version = ?1",
            [version],
            |r| r.get(0),
        )?;
        if done == 0 {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, crate::now_ms()],
            )?;
        }
    }
    Ok(())
}
