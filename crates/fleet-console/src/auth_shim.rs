//! Users, roles and sessions with the registry's signatures, kept in memory.
//!
//! Temporary: the registry's own users and sessions (durable, in `users.rs`) replace this file;
//! every use in the console goes through these names ([`AuthRegistry`]'s methods have the
//! registry's inherent methods' signatures), so removing the file and this trait's imports is
//! the whole switch. Until then users and sessions last as long as the process.

use lichen_fleet_registry::{Registry, RegistryError};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(RegistryError::Invalid(format!(
                "role {other:?} is not one of viewer, operator, admin"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf_token: String,
    pub expires_at: i64,
}

/// The registry's user and session operations.
pub trait AuthRegistry {
    fn create_user(
        &self,
        who: &str,
        name: &str,
        password: &str,
        role: Role,
    ) -> Result<User, RegistryError>;
    fn verify_password(&self, name: &str, password: &str) -> Result<Option<User>, RegistryError>;
    fn list_users(&self) -> Result<Vec<User>, RegistryError>;
    fn set_user_role(&self, who: &str, name: &str, role: Role) -> Result<(), RegistryError>;
    fn delete_user(&self, who: &str, name: &str) -> Result<(), RegistryError>;
    /// Returns the session and its secret token.
    fn create_session(&self, user: &str, ttl_secs: u64)
    -> Result<(String, Session), RegistryError>;
    /// None: unknown or expired.
    fn session(&self, token: &str) -> Result<Option<Session>, RegistryError>;
    fn delete_session(&self, token: &str) -> Result<(), RegistryError>;
}

#[derive(Default)]
struct Store {
    /// name → (user, salt, SHA-256(salt ‖ password)).
    users: HashMap<String, (User, [u8; 16], [u8; 32])>,
    /// SHA-256(token) → session.
    sessions: HashMap<[u8; 32], Session>,
}

/// One store per registry (keyed by its address: tests open several registries).
fn with_store<T>(r: &Registry, f: impl FnOnce(&mut Store) -> T) -> T {
    static STORES: OnceLock<Mutex<HashMap<usize, Store>>> = OnceLock::new();
    let mut all = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    f(all.entry(r as *const Registry as usize).or_default())
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn hash(salt: &[u8], password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    h.finalize().into()
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(crate) fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn not_found(name: &str) -> RegistryError {
    RegistryError::NotFound {
        kind: "user",
        name: name.into(),
    }
}

impl AuthRegistry for Registry {
    fn create_user(
        &self,
        _who: &str,
        name: &str,
        password: &str,
        role: Role,
    ) -> Result<User, RegistryError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return Err(RegistryError::Invalid(format!(
                "user name {name:?} must be 1-64 letters, digits or . _ - @"
            )));
        }
        if password.len() < 8 {
            return Err(RegistryError::Invalid(
                "a password needs at least 8 characters".into(),
            ));
        }
        with_store(self, |s| {
            if s.users.contains_key(name) {
                return Err(RegistryError::AlreadyExists {
                    kind: "user",
                    name: name.into(),
                    arn: String::new(),
                });
            }
            let user = User {
                name: name.into(),
                role,
                created_at: now_s(),
            };
            let salt: [u8; 16] = rand::rng().random();
            s.users
                .insert(name.into(), (user.clone(), salt, hash(&salt, password)));
            Ok(user)
        })
    }

    fn verify_password(&self, name: &str, password: &str) -> Result<Option<User>, RegistryError> {
        Ok(with_store(self, |s| {
            let (user, salt, h) = s.users.get(name)?;
            constant_time_eq(&hash(salt, password), h).then(|| user.clone())
        }))
    }

    fn list_users(&self) -> Result<Vec<User>, RegistryError> {
        let mut v: Vec<User> =
            with_store(self, |s| s.users.values().map(|u| u.0.clone()).collect());
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn set_user_role(&self, _who: &str, name: &str, role: Role) -> Result<(), RegistryError> {
        with_store(self, |s| {
            let u = s.users.get_mut(name).ok_or_else(|| not_found(name))?;
            u.0.role = role;
            for sess in s.sessions.values_mut() {
                if sess.user.name == name {
                    sess.user.role = role;
                }
            }
            Ok(())
        })
    }

    fn delete_user(&self, _who: &str, name: &str) -> Result<(), RegistryError> {
        with_store(self, |s| {
            s.users.remove(name).ok_or_else(|| not_found(name))?;
            s.sessions.retain(|_, sess| sess.user.name != name);
            Ok(())
        })
    }

    fn create_session(
        &self,
        user: &str,
        ttl_secs: u64,
    ) -> Result<(String, Session), RegistryError> {
        with_store(self, |s| {
            let u = s.users.get(user).ok_or_else(|| not_found(user))?.0.clone();
            let token = random_token();
            let session = Session {
                user: u,
                csrf_token: random_token(),
                expires_at: now_s() + ttl_secs as i64,
            };
            s.sessions.insert(token_hash(&token), session.clone());
            Ok((token, session))
        })
    }

    fn session(&self, token: &str) -> Result<Option<Session>, RegistryError> {
        let now = now_s();
        Ok(with_store(self, |s| {
            s.sessions.retain(|_, sess| sess.expires_at > now);
            s.sessions.get(&token_hash(token)).cloned()
        }))
    }

    fn delete_session(&self, token: &str) -> Result<(), RegistryError> {
        with_store(self, |s| s.sessions.remove(&token_hash(token)));
        Ok(())
    }
}

/// The administrator's console password: `<admin_dir>/console-password` (0600), created with
/// a random password on first start; user `admin` (role admin) gets it.
pub fn ensure_admin(registry: &Registry, admin_dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = admin_dir.join("console-password");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) => p.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let p = random_token();
            let tmp = admin_dir.join(".console-password.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(format!("{p}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            p
        }
        Err(e) => return Err(e),
    };
    match registry.create_user("lichen", "admin", &password, Role::Admin) {
        Ok(_) | Err(RegistryError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}
