//! Users of the fleet (console logins and owners of access keys), their roles, and console
//! sessions.
//!
//! A password is kept only as an Argon2id PHC string (its own salt and parameters). A session
//! is a random 32-byte token (base64url) given to the client once; only its SHA-256 is stored,
//! so a copy of the database opens no session. A session and an access key carry no role of
//! their own: each request reads its user's current role, so a role change or a deletion takes
//! effect on the next request.
//!
//! Access keys: the `admin` key that `lichen fleet serve` writes to `<root>/admin` belongs to
//! the user `admin`; keys made with [`Registry::create_access_key`] belong to the user named;
//! a key of no user (the object store's presigning key) has the role [`Role::Viewer`].

use crate::db::{Transaction, params};
use crate::{Registry, RegistryError, Result, none_if_no_rows, now_ms};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use std::fmt;
use std::str::FromStr;

/// What a user may do on the control API and in the console. Ordered: each role may do what
/// the roles below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read only: Describe, Get, List, Head.
    Viewer,
    /// Fleet operations: things, groups, components, deployments, jobs, shadows, certificates.
    Operator,
    /// Also users, access keys, policies, role aliases, CA certificates, provisioning
    /// templates and secrets.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                RegistryError::Invalid(format!("role {s:?} is not one of viewer, operator, admin"))
            })
    }
}

/// A user (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// A console session, as of the moment it was read (its user's current role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    /// Echoed by the console's forms; compare with [`constant_time_eq`].
    pub csrf_token: String,
    /// Milliseconds since the epoch; the session is refused from then on.
    pub expires_at: i64,
}

/// An access key (without its secret) and the role its requests run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    /// The owning user; None for the fleet's own keys (the presigning key).
    pub user: Option<String>,
    /// `admin`, `presign`, or `user` for keys made by [`Registry::create_access_key`].
    pub kind: String,
    pub role: Role,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
const MAX_PASSWORD_LEN: usize = 1024;

/// Compares two strings in time that depends only on their lengths (CSRF tokens).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A new random secret: 32 bytes, base64url without padding.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "user name {name:?} must be 1 to 64 letters, digits or _ . @ -"
        )))
    }
}

fn hash_password(password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(RegistryError::Invalid(format!(
            "the password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters long"
        )));
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| RegistryError::Invalid(format!("password salt: {e}")))?;
    // Argon2id v19 with the crate's defaults (19 MiB, 2 passes, 1 lane): OWASP's minimum.
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RegistryError::Invalid(format!("hashing the password: {e}")))
}

fn password_matches(hash: &str, password: &str) -> bool {
    // An empty hash (a user whose password was never set) matches nothing.
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Verified against when the user does not exist, so that an unknown name costs as much time
/// as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

fn user_row(r: &crate::db::Row) -> crate::db::DbResult<(User, String)> {
    let role: String = r.get(1)?;
    Ok((
        User {
            name: r.get(0)?,
            role: role
                .parse()
                .map_err(|e: RegistryError| crate::db::DbError::Type {
                    index: 1,
                    message: e.to_string(),
                })?,
            created_at: r.get(2)?,
        },
        r.get(3)?,
    ))
}

fn find_user(tx: &Transaction<'_>, name: &str) -> Result<Option<(User, String)>> {
    Ok(tx
        .query_row(
            "SELECT name, role, created_at, password_hash FROM users WHERE name = ?1",
            [name],
            user_row,
        )
        .map(Some)
        .or_else(none_if_no_rows)?)
}

fn not_found(name: &str) -> RegistryError {
    RegistryError::NotFound {
        kind: "user",
        name: name.to_string(),
    }
}

/// Refuses a change that would leave no user with the admin role (nobody could manage users).
fn keep_an_admin(tx: &Transaction<'_>, name: &str) -> Result<()> {
    let others: i64 = tx.query_row(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND name <> ?1",
        [name],
        |r| r.get(0),
    )?;
    if others == 0 {
        return Err(RegistryError::Invalid(format!(
            "user {name:?} is the last admin: give another user the admin role first"
        )));
    }
    Ok(())
}

impl Registry {
    /// Creates a user. `who` is recorded in the audit log.
    pub fn create_user(&self, who: &str, name: &str, password: &str, role: Role) -> Result<User> {
        check_name(name)?;
        let hash = hash_password(password)?;
        self.write(who, "CreateUser", name, |tx| {
            if find_user(tx, name)?.is_some() {
                return Err(RegistryError::AlreadyExists {
                    kind: "user",
                    name: name.to_string(),
                    arn: String::new(),
                });
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO users (name, password_hash, role, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![name, hash, role.as_str(), now],
            )?;
            Ok((
                User {
                    name: name.to_string(),
                    role,
                    created_at: now,
                },
                vec![],
            ))
        })
    }

    /// The user, when `name` exists and `password` is its password.
    pub fn verify_password(&self, name: &str, password: &str) -> Result<Option<User>> {
        let found = self.read(|tx| find_user(tx, name))?;
        Ok(match found {
            Some((user, hash)) => password_matches(&hash, password).then_some(user),
            None => {
                let _ = password_matches(dummy_hash(), password);
                None
            }
        })
    }

    /// One user, if it exists.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        Ok(self.read(|tx| find_user(tx, name))?.map(|(u, _)| u))
    }

    /// Every user, by name.
    pub fn list_users(&self) -> Result<Vec<User>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare("SELECT name, role, created_at, password_hash FROM users ORDER BY name")?;
            let rows = stmt.query_map([], user_row)?;
            Ok(rows
                .map(|r| r.map(|(u, _)| u))
                .collect::<crate::db::DbResult<Vec<_>>>()?)
        })
    }

    /// Changes a user's role; its sessions and access keys act with it from their next request.
    pub fn set_user_role(&self, who: &str, name: &str, role: Role) -> Result<()> {
        self.write(who, "SetUserRole", name, |tx| {
            let (user, _) = find_user(tx, name)?.ok_or_else(|| not_found(name))?;
            if user.role == Role::Admin && role != Role::Admin {
                keep_an_admin(tx, name)?;
            }
            tx.execute(
                "UPDATE users SET role = ?1, updated_at = ?2 WHERE name = ?3",
                params![role.as_str(), now_ms(), name],
            )?;
            Ok(((), vec![]))
        })
    }

    /// Replaces a user's password (its open sessions stay open).
    pub fn set_user_password(&self, who: &str, name: &str, password: &str) -> Result<()> {
        let hash = hash_password(password)?;
        self.write(who, "SetUserPassword", name, |tx| {
            let n = tx.execute(
                "UPDATE users SET password_hash = ?1, updated_at = ?2 WHERE name = ?3",
                params![hash, now_ms(), name],
            )?;
            if n == 0 {
                return Err(not_found(name));
            }
            Ok(((), vec![]))
        })
    }

    /// Deletes a user with its sessions and access keys.
    pub fn delete_user(&self, who: &str, name: &str) -> Result<()> {
        self.write(who, "DeleteUser", name, |tx| {
            let (user, _) = find_user(tx, name)?.ok_or_else(|| not_found(name))?;
            if user.role == Role::Admin {
                keep_an_admin(tx, name)?;
            }
            tx.execute("DELETE FROM user_sessions WHERE user_name = ?1", [name])?;
            tx.execute("DELETE FROM access_keys WHERE user_name = ?1", [name])?;
            tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
            Ok(((), vec![]))
        })
    }

    /// Whether `name` exists with a password set (the first `admin` exists without one until
    /// `lichen fleet serve` gives it one).
    pub fn user_has_password(&self, name: &str) -> Result<bool> {
        Ok(self
            .read(|tx| find_user(tx, name))?
            .is_some_and(|(_, h)| !h.is_empty()))
    }

    /// Gives `name` this password if it has none yet, creating it with `role` if it does not
    /// exist; returns whether anything changed. Safe to repeat (and to run from several fleet
    /// processes at once): a password once set is never replaced here.
    pub fn init_user_password(
        &self,
        who: &str,
        name: &str,
        role: Role,
        password: &str,
    ) -> Result<bool> {
        check_name(name)?;
        if self.user_has_password(name)? {
            return Ok(false);
        }
        let hash = hash_password(password)?;
        let changed = self.run(true, |tx| {
            let now = now_ms();
            let changed = match find_user(tx, name)? {
                Some((_, h)) if !h.is_empty() => false,
                Some(_) => {
                    tx.execute(
                        "UPDATE users SET password_hash = ?1, updated_at = ?2 WHERE name = ?3",
                        params![hash, now, name],
                    )?;
                    true
                }
                None => {
                    tx.execute(
                        "INSERT INTO users (name, password_hash, role, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?4)",
                        params![name, hash, role.as_str(), now],
                    )?;
                    true
                }
            };
            if changed {
                crate::audit::record(tx, who, "SetUserPassword", name)?;
            }
            Ok(changed)
        })?;
        Ok(changed)
    }

    /// Opens a session for `user` lasting `ttl_secs`; returns its secret token (given to the
    /// client once: only its SHA-256 is stored) and the session. Expired sessions are removed.
    pub fn create_session(&self, user: &str, ttl_secs: u64) -> Result<(String, Session)> {
        let token = random_token();
        let csrf = random_token();
        let digest = sha256_hex(&token);
        let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
        let session = self.write(user, "CreateSession", user, |tx| {
            let (u, _) = find_user(tx, user)?.ok_or_else(|| not_found(user))?;
            let now = now_ms();
            tx.execute("DELETE FROM user_sessions WHERE expires_at <= ?1", [now])?;
            let expires_at = now.saturating_add(ttl_ms);
            tx.execute(
                "INSERT INTO user_sessions (token_sha256, user_name, csrf_token, expires_at,
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![digest, user, csrf, expires_at, now],
            )?;
            Ok((
                Session {
                    user: u,
                    csrf_token: csrf.clone(),
                    expires_at,
                },
                vec![],
            ))
        })?;
        Ok((token, session))
    }

    /// The session of `token` with its user's current role; None when unknown or expired.
    pub fn session(&self, token: &str) -> Result<Option<Session>> {
        let digest = sha256_hex(token);
        self.read(|tx| {
            let row = tx
                .query_row(
                    "SELECT u.name, u.role, u.created_at, u.password_hash, s.csrf_token,
                     s.expires_at FROM user_sessions s JOIN users u ON u.name = s.user_name
                     WHERE s.token_sha256 = ?1",
                    [&digest],
                    |r| Ok((user_row(r)?.0, r.get::<_, String>(4)?, r.get::<_, i64>(5)?)),
                )
                .map(Some)
                .or_else(none_if_no_rows)?;
            Ok(row.and_then(|(user, csrf_token, expires_at)| {
                (expires_at > now_ms()).then_some(Session {
                    user,
                    csrf_token,
                    expires_at,
                })
            }))
        })
    }

    /// Ends the session of `token` (logout); an unknown token is not an error.
    pub fn delete_session(&self, token: &str) -> Result<()> {
        let digest = sha256_hex(token);
        let user: Option<String> = self.read(|tx| {
            Ok(tx
                .query_row(
                    "SELECT user_name FROM user_sessions WHERE token_sha256 = ?1",
                    [&digest],
                    |r| r.get(0),
                )
                .map(Some)
                .or_else(none_if_no_rows)?)
        })?;
        let Some(user) = user else { return Ok(()) };
        self.write(&user, "DeleteSession", &user, |tx| {
            tx.execute(
                "DELETE FROM user_sessions WHERE token_sha256 = ?1",
                [&digest],
            )?;
            Ok(((), vec![]))
        })
    }

    /// Creates an access key for `user` (its requests run with the user's role); returns the
    /// key id and its secret. `generate` makes the pair.
    pub fn create_access_key(
        &self,
        who: &str,
        user: &str,
        generate: impl FnOnce() -> (String, String),
    ) -> Result<(String, String)> {
        let (id, secret) = generate();
        self.write(who, "CreateAccessKey", &id, |tx| {
            find_user(tx, user)?.ok_or_else(|| not_found(user))?;
            tx.execute(
                "INSERT INTO access_keys (id, secret, kind, created_at, user_name)
                 VALUES (?1, ?2, 'user', ?3, ?4)",
                params![id, secret, now_ms(), user],
            )?;
            Ok(((), vec![]))
        })?;
        Ok((id, secret))
    }

    /// The access keys of `user` (all keys when None), oldest first, without secrets.
    pub fn list_access_keys(&self, user: Option<&str>) -> Result<Vec<AccessKey>> {
        self.read(|tx| {
            let mut stmt = tx.prepare(&format!(
                "{KEY_SELECT} WHERE (CAST(?1 AS TEXT) IS NULL OR k.user_name = ?1)
                 ORDER BY k.created_at, k.id"
            ))?;
            let rows = stmt.query_map([user], |r| Ok(key_row(r)?.0))?;
            Ok(rows.collect::<crate::db::DbResult<Vec<_>>>()?)
        })
    }

    /// Deletes an access key of a user (the fleet's own keys are not deleted here).
    pub fn delete_access_key(&self, who: &str, id: &str) -> Result<()> {
        self.write(who, "DeleteAccessKey", id, |tx| {
            let n = tx.execute(
                "DELETE FROM access_keys WHERE id = ?1 AND kind = 'user'",
                [id],
            )?;
            if n == 0 {
                return Err(RegistryError::NotFound {
                    kind: "user access key",
                    name: id.to_string(),
                });
            }
            Ok(((), vec![]))
        })
    }

    /// An access key with its secret (for SigV4 verification) and its user's current role.
    pub fn access_key(&self, id: &str) -> Result<Option<(AccessKey, String)>> {
        self.read(|tx| {
            Ok(tx
                .query_row(&format!("{KEY_SELECT} WHERE k.id = ?1"), [id], key_row)
                .map(Some)
                .or_else(none_if_no_rows)?)
        })
    }
}

const KEY_SELECT: &str = "SELECT k.id, k.user_name, k.kind, u.role, k.created_at, k.secret \
     FROM access_keys k LEFT JOIN users u ON u.name = k.user_name";

fn key_row(r: &crate::db::Row) -> crate::db::DbResult<(AccessKey, String)> {
    let role: Option<String> = r.get(3)?;
    Ok((
        AccessKey {
            id: r.get(0)?,
            user: r.get(1)?,
            kind: r.get(2)?,
            // A key of no user is the fleet's own (presigned GETs): read only.
            role: match role {
                Some(role) => {
                    role.parse()
                        .map_err(|e: RegistryError| crate::db::DbError::Type {
                            index: 3,
                            message: e.to_string(),
                        })?
                }
                None => Role::Viewer,
            },
            created_at: r.get(4)?,
        },
        r.get(5)?,
    ))
}

/// In [`Registry::ensure_access_key`]'s transaction: the `admin` key belongs to the user
/// `admin`, created (without a password) when missing.
pub(crate) fn owner_of_fleet_key(tx: &Transaction<'_>, kind: &str) -> Result<Option<String>> {
    if kind != "admin" {
        return Ok(None);
    }
    if find_user(tx, "admin")?.is_none() {
        let now = now_ms();
        tx.execute(
            "INSERT INTO users (name, password_hash, role, created_at, updated_at)
             VALUES ('admin', '', 'admin', ?1, ?1)",
            [now],
        )?;
    }
    Ok(Some("admin".into()))
}
