//! The fleet's durable registry: things, thing groups, certificates, policies, the attachments
//! between them, role aliases, access keys, users with roles and console sessions ([`User`],
//! [`Role`], [`Session`]), the audit log, the tables of the jobs service
//! (jobs and job executions, [`JobsTx`]), and Greengrass deployments with what core devices
//! report ([`deployments`], [`CoreDevice`]; device reports are observations and are not
//! audited), devices' connection state ([`Presence`]), Device Defender reports
//! ([`DefenderReport`]) and CloudWatch Logs groups, streams and events ([`LogGroup`]) — the last
//! three are observations and data, not administrative changes, and are not audited either.
//!
//! Storage is SQLite (embedded, `rusqlite`) or PostgreSQL (`postgres`, for several fleet
//! processes on one database), each under one connection and one mutex per process. The schema
//! and every statement keep to SQL both run (TEXT/BIGINT columns, explicit keys, no
//! `AUTOINCREMENT`, JSON kept as text and read in Rust); `db` rewrites placeholders.
//!
//! Architecture invariant: a call that returns `Ok` has committed: SQLite runs in WAL mode
//! with `synchronous=FULL`, PostgreSQL commits synchronously, so an acknowledged change
//! survives a crash of the process or the machine.
//! Architecture invariant: on PostgreSQL every write transaction is SERIALIZABLE (retried when
//! it loses a race), so processes sharing a database behave as one: of two concurrent
//! CreateThing of one name with different attributes exactly one succeeds.
//! Architecture invariant: every mutation writes its audit entry (who, operation, resource) in
//! the same transaction as the change itself.
//! Architecture invariant: a [`Change`] is announced only after its transaction committed.
//! Architecture invariant: no password or session token is stored, only a password's salted
//! Argon2id hash and a token's SHA-256; a session or access key acts with its user's current role.
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
mod components;
mod core_devices;
mod credentials;
mod db;
pub mod deployments;
mod jobs;
mod logs;
mod migrations;
mod page;
mod permissions;
mod policies;
mod presence;
mod query;
mod secrets;
mod shadows;
mod templates;
mod thing_types;
mod things;
mod users;

pub use audit::AuditEntry;
pub use certs::{
    Certificate, CertificateStatus, NewCertificate, PrincipalAuthorization, RoleAlias,
};
pub use components::ComponentVersion;
pub use core_devices::{CoreDevice, FleetStatusReport, InstalledComponent, ReportedComponent};
pub use credentials::TemporaryCredentials;
pub use deployments::{CreatedDeployment, Deployment, EffectiveDeployment, NewDeployment};
pub use jobs::{ExecutionRow, JobRow, JobsTx, job_not_found};
pub use logs::{LogEvent, LogGroup, LogQuery, LogStream};
pub use page::{Page, PageRequest};
pub use permissions::required_role;
pub use policies::Policy;
pub use presence::{DefenderReport, Presence};
pub use secrets::{Secret, SecretValue, SecretVersion};
pub use shadows::{ShadowKey, ShadowRecord, ShadowWrite};
pub use templates::ProvisioningTemplate;
pub use thing_types::ThingType;
pub use things::{Thing, ThingGroup, ThingQuery};
pub use users::{AccessKey, MIN_PASSWORD_LEN, Role, Session, User, constant_time_eq, random_token};

use db::{DbError, Transaction};
use std::cell::RefCell;
use std::path::Path;
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
    #[error("registry database {location}: {source}; check that it is reachable and writable")]
    Db {
        /// The SQLite file, or the PostgreSQL URL without its password.
        location: String,
        #[source]
        source: DbError,
    },
    /// A statement failed inside a transaction; [`Registry`] turns it into `Db` with the location.
    #[error("registry statement: {0}")]
    Sql(#[from] DbError),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Sql(e.into())
    }
}

/// A committed change the device endpoint acts on (drop sessions, re-read policies).
///
/// Delivered through a bounded broadcast channel: a receiver that lags gets
/// `RecvError::Lagged` and must re-read the state it caches.
///
/// Only this process's own changes are announced. With several fleet processes on one
/// PostgreSQL database, a change made through another process reaches this one's devices
/// when the device endpoint next re-checks its connections (every 30 s).
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

enum Store {
    Sqlite(rusqlite::Connection),
    Pg {
        client: postgres::Client,
        config: Box<postgres::Config>,
    },
    /// Only while the registry is dropped.
    Closed,
}

/// The registry: cheap to share behind an `Arc`.
pub struct Registry {
    store: Mutex<Store>,
    postgres: bool,
    location: String,
    account: String,
    region: String,
    changes: broadcast::Sender<Change>,
    /// See [`Registry::set_device_stale_after`].
    stale_after_ms: std::sync::atomic::AtomicI64,
}

/// How often a PostgreSQL transaction is retried after it lost a race with another process.
const PG_RETRIES: u32 = 30;

impl Registry {
    /// Opens (creating if absent) the database at `path` and applies pending migrations.
    /// `region` is the region in ARNs; the account id is generated once and kept.
    pub fn open(path: &Path, region: &str) -> Result<Self> {
        let location = path.display().to_string();
        let db = |source: rusqlite::Error| RegistryError::Db {
            location: location.clone(),
            source: source.into(),
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
        let conn = rusqlite::Connection::open(path).map_err(db)?;
        // WAL + FULL: a commit returns only once the WAL is fsynced, so acknowledged = durable.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        Self::start(Store::Sqlite(conn), location, region)
    }

    /// Opens the registry in a PostgreSQL database (`postgres://user@host:port/db`, or
    /// `?host=/socket/dir`), applying pending migrations; several fleet processes may share it.
    /// The connection is not encrypted: reach the server over a local socket, loopback or a
    /// tunnel.
    pub fn open_postgres(url: &str, region: &str) -> Result<Self> {
        let config: postgres::Config = url.parse().map_err(|e| RegistryError::Db {
            location: redact(url),
            source: DbError::Pg(e),
        })?;
        let client = config
            .connect(postgres::NoTls)
            .map_err(|e| RegistryError::Db {
                location: redact(url),
                source: DbError::Pg(e),
            })?;
        let mut client = client;
        check_collation(&mut client).map_err(|e| match e {
            RegistryError::Sql(source) => RegistryError::Db {
                location: redact(url),
                source,
            },
            e => e,
        })?;
        let store = Store::Pg {
            client,
            config: Box::new(config),
        };
        Self::start(store, redact(url), region)
    }

    fn start(store: Store, location: String, region: &str) -> Result<Self> {
        let (changes, _) = broadcast::channel(1024);
        let mut registry = Registry {
            postgres: matches!(store, Store::Pg { .. }),
            store: Mutex::new(store),
            location,
            account: String::new(),
            region: region.to_string(),
            changes,
            stale_after_ms: std::sync::atomic::AtomicI64::new(0),
        };
        registry.run(true, migrations::apply)?;
        registry.account = registry.run(true, |tx| {
            // Two processes starting at once on one database agree on the first account id.
            let candidate = format!("{:012}", rand::random::<u64>() % 1_000_000_000_000);
            tx.execute(
                "INSERT INTO settings (name, value) VALUES ('account_id', ?1)
                 ON CONFLICT (name) DO NOTHING",
                [&candidate],
            )?;
            Ok(setting(tx, "account_id")?.unwrap_or(candidate))
        })?;
        Ok(registry)
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

    fn with_path(&self, e: RegistryError) -> RegistryError {
        match e {
            RegistryError::Sql(source) => RegistryError::Db {
                location: self.location.clone(),
                source,
            },
            e => e,
        }
    }

    /// Runs `f` in one transaction and commits. A write is exclusive (SQLite: immediate;
    /// PostgreSQL: serializable, retried when it lost a race with another process, so `f` may
    /// run more than once); a read sees one consistent snapshot.
    fn run<T: Send>(
        &self,
        write: bool,
        mut f: impl FnMut(&Transaction<'_>) -> Result<T> + Send,
    ) -> Result<T> {
        let mut go = || -> Result<T> {
            let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *store {
                Store::Sqlite(conn) => {
                    let tx = if write {
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?
                    } else {
                        conn.transaction()?
                    };
                    let tx = Transaction::Sqlite(tx);
                    let v = f(&tx)?;
                    tx.commit()?;
                    Ok(v)
                }
                Store::Closed => unreachable!("a registry being dropped is not used"),
                Store::Pg { client, config } => {
                    let mut attempt = 0;
                    loop {
                        if client.is_closed() {
                            // The server restarted or the connection broke: one fresh try.
                            *client = config.connect(postgres::NoTls).map_err(DbError::Pg)?;
                        }
                        match pg_attempt(client, write, &mut f) {
                            Err(RegistryError::Sql(e))
                                if e.is_retryable() && attempt < PG_RETRIES =>
                            {
                                attempt += 1;
                                let ms = rand::random::<u64>() % (2 + 2 * u64::from(attempt));
                                std::thread::sleep(std::time::Duration::from_millis(ms));
                            }
                            r => return r,
                        }
                    }
                }
            }
        };
        let r = if self.postgres && tokio::runtime::Handle::try_current().is_ok() {
            // The synchronous PostgreSQL client drives its own runtime, which must not be
            // entered from a thread that runs async tasks: do the transaction on its own thread.
            std::thread::scope(|s| {
                s.spawn(go)
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            go()
        };
        r.map_err(|e| self.with_path(e))
    }

    /// Runs `f` in one write transaction, writes the audit entry and commits; then announces
    /// the changes `f` returned.
    fn write<T: Send>(
        &self,
        who: &str,
        operation: &str,
        resource: &str,
        mut f: impl FnMut(&Transaction<'_>) -> Result<(T, Vec<Change>)> + Send,
    ) -> Result<T> {
        let (value, changes) = self.run(true, |tx| {
            let r = f(tx)?;
            audit::record(tx, who, operation, resource)?;
            Ok(r)
        })?;
        for c in changes {
            // No receiver is fine: nobody caches state yet.
            let _ = self.changes.send(c);
        }
        Ok(value)
    }

    /// Runs a read in a transaction (one consistent snapshot).
    fn read<T: Send>(&self, f: impl FnMut(&Transaction<'_>) -> Result<T> + Send) -> Result<T> {
        self.run(false, f)
    }

    /// Records one of the fleet's own access keys (or returns the existing one of that `kind`):
    /// `admin` belongs to the user `admin` (created without a password when missing), others
    /// to no user (read only, see [`AccessKey`]).
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
            let user = users::owner_of_fleet_key(tx, kind)?;
            tx.execute(
                "INSERT INTO access_keys (id, secret, kind, created_at, user_name)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                db::params![id, secret, kind, now_ms(), user],
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

impl Drop for Registry {
    fn drop(&mut self) {
        // Closing the PostgreSQL client blocks on its runtime, which panics on a thread that
        // drives async tasks: close it on a thread of its own.
        let store = self.store.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Store::Pg { .. } = store
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let store = std::mem::replace(store, Store::Closed);
            let _ = std::thread::spawn(move || drop(store)).join();
        }
    }
}

fn pg_attempt<T>(
    client: &mut postgres::Client,
    write: bool,
    f: &mut impl FnMut(&Transaction<'_>) -> Result<T>,
) -> Result<T> {
    use postgres::IsolationLevel;
    let b = client.build_transaction();
    let b = if write {
        b.isolation_level(IsolationLevel::Serializable)
    } else {
        b.isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
    };
    let tx = Transaction::Pg(RefCell::new(b.start().map_err(DbError::Pg)?));
    let v = f(&tx)?;
    tx.commit()?;
    Ok(v)
}

/// Pages continue after the last name returned and some lists merge names in Rust, so text must
/// sort in byte order as in SQLite: a database with another collation is refused.
fn check_collation(client: &mut postgres::Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_database()::text, datcollate::text, datlocprovider::text
             FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .map_err(DbError::Pg)?;
    let (name, collate, provider): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let bytewise =
        provider == "c" && ["C", "POSIX", "C.UTF-8", "C.utf8"].contains(&collate.as_str());
    if bytewise {
        return Ok(());
    }
    Err(RegistryError::Invalid(format!(
        "PostgreSQL database {name:?} sorts text by the {} collation {collate:?}; the fleet \
         registry needs byte order: create its database with \
         CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'",
        if provider == "i" { "ICU" } else { "libc" }
    )))
}

/// The URL as errors show it: without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn setting(tx: &Transaction<'_>, name: &str) -> db::DbResult<Option<String>> {
    tx.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .map(Some)
    .or_else(none_if_no_rows)
}

fn none_if_no_rows<T>(e: DbError) -> db::DbResult<Option<T>> {
    match e {
        DbError::NoRows => Ok(None),
        e => Err(e),
    }
}

/// Milliseconds since the epoch (stored); the API shows seconds.
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod deployments_tests;
#[cfg(test)]
mod pg_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod users_tests;
