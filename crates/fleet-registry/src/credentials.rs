//! What the credentials provider keeps: each role's permissions policy (the fleet has no IAM,
//! so the operator stores one IAM-style document per role ARN) and the temporary credentials
//! minted for devices.
//!
//! A temporary secret is stored as is: SigV4 derives its signing key from the secret itself,
//! so a verifier must hold it (as it does for the administrator's key; the database is 0600).
//! The session token is only ever compared, so only its SHA-256 is kept.

use crate::db::params;
use crate::{Registry, Result, none_if_no_rows, now_ms};

/// Temporary credentials bound to a role, a role alias, a thing and a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporaryCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Lower-case hex SHA-256 of the session token.
    pub token_sha256: String,
    pub role_arn: String,
    pub role_alias: String,
    pub thing_name: String,
    pub certificate_id: String,
    /// Milliseconds since the epoch after which the credentials are refused.
    pub expires_ms: i64,
}

impl Registry {
    /// Stores (replacing) the permissions policy of a role. The caller validates the document.
    pub fn put_role_policy(&self, who: &str, role_arn: &str, document: &str) -> Result<()> {
        self.write(who, "PutRolePolicy", role_arn, |tx| {
            tx.execute(
                "DELETE FROM role_policies WHERE role_arn = ?1",
                params![role_arn],
            )?;
            tx.execute(
                "INSERT INTO role_policies (role_arn, document, updated_at) VALUES (?1, ?2, ?3)",
                params![role_arn, document, now_ms()],
            )?;
            Ok(((), vec![]))
        })
    }

    /// The permissions policy of a role, if the operator stored one.
    pub fn role_policy(&self, role_arn: &str) -> Result<Option<String>> {
        self.read(|tx| {
            tx.query_row(
                "SELECT document FROM role_policies WHERE role_arn = ?1",
                [role_arn],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(none_if_no_rows)
            .map_err(Into::into)
        })
    }

    /// Records freshly minted credentials (audited as `AssumeRoleWithCertificate` by the
    /// certificate) and forgets those that expired more than a day ago.
    pub fn insert_temporary_credentials(&self, c: &TemporaryCredentials) -> Result<()> {
        let who = format!("cert/{}", c.certificate_id);
        self.write(&who, "AssumeRoleWithCertificate", &c.role_alias, |tx| {
            tx.execute(
                "DELETE FROM temporary_credentials WHERE expires_at < ?1",
                params![now_ms() - 86_400_000],
            )?;
            tx.execute(
                "INSERT INTO temporary_credentials (access_key_id, secret, token_sha256, role_arn,
                 role_alias, thing_name, certificate_id, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    c.access_key_id,
                    c.secret_access_key,
                    c.token_sha256,
                    c.role_arn,
                    c.role_alias,
                    c.thing_name,
                    c.certificate_id,
                    c.expires_ms,
                    now_ms()
                ],
            )?;
            Ok(((), vec![]))
        })
    }

    /// Temporary credentials by access key id (expired ones included: the caller tells
    /// "expired" from "unknown").
    pub fn temporary_credentials(
        &self,
        access_key_id: &str,
    ) -> Result<Option<TemporaryCredentials>> {
        self.read(|tx| {
            tx.query_row(
                "SELECT access_key_id, secret, token_sha256, role_arn, role_alias, thing_name,
                 certificate_id, expires_at FROM temporary_credentials WHERE access_key_id = ?1",
                [access_key_id],
                |r| {
                    Ok(TemporaryCredentials {
                        access_key_id: r.get(0)?,
                        secret_access_key: r.get(1)?,
                        token_sha256: r.get(2)?,
                        role_arn: r.get(3)?,
                        role_alias: r.get(4)?,
                        thing_name: r.get(5)?,
                        certificate_id: r.get(6)?,
                        expires_ms: r.get(7)?,
                    })
                },
            )
            .map(Some)
            .or_else(none_if_no_rows)
            .map_err(Into::into)
        })
    }
}
