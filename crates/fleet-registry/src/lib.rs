//! The fleet's durable registry: things, thing groups, certificates, policies, the attachments
//! between them, role aliases, access keys and the audit log.
//!
//! Storage is SQLite (embedded, `rusqlite`) under one connection and one mutex. The schema and
//! every statement keep to SQL that PostgreSQL also runs (TEXT/BIGINT columns, explicit keys,
//! no `AUTOINCREMENT`, JSON kept as text and read in Rust), so a PostgreSQL store can later run
//! the same migrations.
//!
//! Architecture invariant: a call that returns `Ok` has committed: the database runs in WAL mode
//! with `synchronous=FULL`, so an acknowledged change survives a crash of the process or the
//! machine.
//! Architecture invariant: every mutation writes its audit entry (who, operation, resource) in
//! the same transaction as the change itself.
//! Architecture invariant: a [`Change`] is announced only after its transaction committed.
//!
//! A device endpoint admits a certificate with [`Registry::principal_authorization`] and keeps
//! its connections current by following [`Registry::subscribe`]:
//!
//! ```
//! use lichen_fleet_registry::{CertificateStatus, NewCertificate, Registry};
//! # let dir = tempfile::tempdir().unwrap();
//! let registry = Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap();
//! let mut changes = registry.subscribe();
//! let id = "ab".repeat(32);
//! registry
//!     .insert_certificate("admin", "RegisterCertificateWithoutCA", &NewCertificate {
//!         id: id.clone(),
//!         pem: String::new(),
//!         status: CertificateStatus::Active,
//!         ca_id: None,
//!         not_before: 0,
//!         not_after: 0,
//!     })
//!     .unwrap();
//! registry.update_certificate("admin", &id, CertificateStatus::Revoked).unwrap();
//!
//! // In the endpoint's task: for each change, re-read the certificates it touches.
//! let change = changes.try_recv().unwrap();
//! for cert in registry.certificates_affected_by(&change).unwrap() {
//!     let auth = registry.principal_authorization(&cert).unwrap().unwrap();
//!     assert_eq!(auth.status, CertificateStatus::Revoked); // → disconnect its devices
//! }
//! ```

mod audit;
mod certs;
mod credentials;
mod migrations;
mod page;
mod policies;
mod query;
mod templates;
mod thing_types;
mod things;

pub use audit::AuditEntry;
pub use certs::{
    Certificate, CertificateStatus, NewCertificate, PrincipalAuthorization, RoleAlias,
};
pub use credentials::TemporaryCredentials;
pub use page::{Page, PageRequest};
pub use policies::Policy;
pub use templates::ProvisioningTemplate;
pub use thing_types::ThingType;
pub use things::{Thing, ThingGroup, ThingQuery};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Failures, each with what and where; the API maps them to AWS error codes.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists with a different configuration")]
    AlreadyExists {
        kind: &'static str,
        name: String,
        arn: String,
    },
    #[error("{0}")]
    VersionConflict(String),
    #[error("{0}")]
    DeleteConflict(String),
    #[error("{0}")]
    CertificateState(String),
    #[error("{0}")]
    MalformedPolicy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("registry database {path}: {source}; check the file and its directory")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed inside a transaction; [`Registry`] turns it into `Db` with the path.
    #[error("registry statement: {0}")]
    Sql(#[from] rusqlite::Error),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// A committed change the device endpoint acts on (drop sessions, re-read policies).
///
/// Delivered through a bounded broadcast channel: a receiver that lags gets
/// `RecvError::Lagged` and must re-read the state it caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A certificate's status changed (e.g. ACTIVE → REVOKED), or it was deleted (`None`).
    CertificateStatus {
        certificate_id: String,
        status: Option<CertificateStatus>,
    },
    /// A policy's document changed or the policy was deleted.
    Policy { policy_name: String },
    /// A policy was attached to or detached from a target (certificate ARN or thing-group ARN).
    PolicyAttachment {
        policy_name: String,
        target: String,
        attached: bool,
    },
    /// A principal (certificate ARN) was attached to or detached from a thing.
    ThingPrincipal {
        thing_name: String,
        principal: String,
        attached: bool,
    },
    /// A thing was deleted or changed groups: its connections may need re-authorizing.
    Thing { thing_name: String },
}

/// The registry: cheap to share behind an `Arc`.
pub struct Registry {
    conn: Mutex<Connection>,
    path: PathBuf,
    account: String,
    region: String,
    changes: broadcast::Sender<Change>,
}

impl Registry {
    /// Opens (creating if absent) the database at `path` and applies pending migrations.
    /// `region` is the region in ARNs; the account id is generated once and kept.
    pub fn open(path: &Path, region: &str) -> Result<Self> {
        let db = |source| RegistryError::Db {
            path: path.to_path_buf(),
            source,
        };
        // The database holds access-key secrets: created 0600 (SQLite gives its -wal and -shm
        // files the same mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    db(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                        Some(format!("cannot create the database file: {e}")),
                    ))
                })?;
        }
        let mut conn = Connection::open(path).map_err(db)?;
        // WAL + FULL: a commit returns only once the WAL is fsynced, so acknowledged = durable.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        migrations::apply(&mut conn).map_err(db)?;
        let account = {
            let tx = conn.transaction().map_err(db)?;
            let account = setting(&tx, "account_id").map_err(db)?;
            let account = match account {
                Some(a) => a,
                None => {
                    let a = format!("{:012}", rand::random::<u64>() % 1_000_000_000_000);
                    tx.execute(
                        "INSERT INTO settings (name, value) VALUES ('account_id', ?1)",
                        [&a],
                    )
                    .map_err(db)?;
                    a
                }
            };
            tx.commit().map_err(db)?;
            account
        };
        let (changes, _) = broadcast::channel(1024);
        Ok(Registry {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            account,
            region: region.to_string(),
            changes,
        })
    }

    /// The 12-digit account id in every ARN.
    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// `arn:aws:iot:<region>:<account>:<resource>`.
    pub fn arn(&self, resource: &str) -> String {
        format!("arn:aws:iot:{}:{}:{resource}", self.region, self.account)
    }

    /// Subscribes to committed changes (see [`Change`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn db_err(&self, source: rusqlite::Error) -> RegistryError {
        RegistryError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn with_path(&self, e: RegistryError) -> RegistryError {
        match e {
            RegistryError::Sql(source) => self.db_err(source),
            e => e,
        }
    }

    /// Runs `f` in one immediate transaction, writes the audit entry and commits; then announces
    /// the changes `f` returned.
    fn write<T>(
        &self,
        who: &str,
        operation: &str,
        resource: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<(T, Vec<Change>)>,
    ) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        let (value, changes) = f(&tx).map_err(|e| self.with_path(e))?;
        audit::record(&tx, who, operation, resource).map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;
        drop(conn);
        for c in changes {
            // No receiver is fine: nobody caches state yet.
            let _ = self.changes.send(c);
        }
        Ok(value)
    }

    /// Runs a read in a transaction (one consistent snapshot).
    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(|e| self.db_err(e))?;
        let v = f(&tx).map_err(|e| self.with_path(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(v)
    }

    /// Records an administrator access key (or returns the existing one of that `kind`).
    pub fn ensure_access_key(
        &self,
        kind: &str,
        generate: impl FnOnce() -> (String, String),
    ) -> Result<(String, String)> {
        let existing = self.read(|tx| {
            tx.query_row(
                "SELECT id, secret FROM access_keys WHERE kind = ?1 ORDER BY created_at LIMIT 1",
                [kind],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .map(Some)
            .or_else(none_if_no_rows)
            .map_err(Into::into)
        })?;
        if let Some(k) = existing {
            return Ok(k);
        }
        let (id, secret) = generate();
        self.write("lichen", "CreateAccessKey", &id, |tx| {
            tx.execute(
                "INSERT INTO access_keys (id, secret, kind, created_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id, secret, kind, now_ms()],
            )?;
            Ok(((), vec![]))
        })?;
        Ok((id, secret))
    }

    /// The secret of an access key, for SigV4 verification.
    pub fn secret_for(&self, access_key_id: &str) -> Result<Option<String>> {
        self.read(|tx| {
            tx.query_row(
                "SELECT secret FROM access_keys WHERE id = ?1",
                [access_key_id],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(none_if_no_rows)
            .map_err(Into::into)
        })
    }
}

fn setting(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<Option<String>> {
    tx.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .map(Some)
    .or_else(none_if_no_rows)
}

fn none_if_no_rows<T>(e: rusqlite::Error) -> rusqlite::Result<Option<T>> {
    match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(None),
        e => Err(e),
    }
}

/// Milliseconds since the epoch (stored); the API shows seconds.
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests;
