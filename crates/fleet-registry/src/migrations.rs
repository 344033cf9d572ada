//! Embedded schema migrations, applied in order in one transaction (on PostgreSQL under an
//! advisory lock, so concurrent starts migrate once).
//!
//! Portable SQL only (SQLite and PostgreSQL): TEXT and BIGINT columns, explicit primary keys,
//! JSON kept as TEXT. Never edit a released migration; add the next one.

use crate::db::{Transaction, params};

const MIGRATIONS: &[&str] = &[
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
CREATE TABLE secrets (
    name TEXT PRIMARY KEY, arn TEXT NOT NULL UNIQUE, description TEXT,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, deleted_at BIGINT);
CREATE TABLE secret_versions (
    secret_name TEXT NOT NULL REFERENCES secrets (name), version_id TEXT NOT NULL,
    secret_string TEXT, secret_binary TEXT, stages TEXT NOT NULL, created_at BIGINT NOT NULL,
    PRIMARY KEY (secret_name, version_id));
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
