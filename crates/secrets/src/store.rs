//! The at-rest store: `<dir>/secrets.json`, one entry per (ARN, version) with its labels and its
//! value sealed with AES-256-GCM. The key is derived (HKDF-SHA256) from the device's private key
//! file and never written anywhere: a copy of the store without the device key is useless, and
//! a core whose key is replaced simply fetches its secrets again. The additional data binds
//! each ciphertext to its ARN and version id, so entries cannot be swapped.

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

use crate::SecretsError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One stored secret version, decrypted in memory only.
#[derive(Clone, PartialEq)]
pub struct Entry {
    pub arn: String,
    pub name: String,
    pub version_id: String,
    pub stages: Vec<String>,
    pub created: f64,
    /// `true`: `value` is SecretBinary's bytes; `false`: SecretString's UTF-8.
    pub binary: bool,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("arn", &self.arn)
            .field("version_id", &self.version_id)
            .field("stages", &self.stages)
            .finish_non_exhaustive()
    }
}

pub struct Store {
    path: PathBuf,
    key: LessSafeKey,
}

impl Store {
    /// Derives the key from `private_key` (the device key file's bytes).
    pub fn open(dir: &Path, private_key: &Path) -> Result<Store, SecretsError> {
        let material = std::fs::read(private_key).map_err(|e| {
            SecretsError::Config(format!(
                "reading the device private key {} (system.privateKeyPath) to derive the secret store key: {e}",
                private_key.display()
            ))
        })?;
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"lichen secret manager");
        let mut key = [0u8; 32];
        salt.extract(&material)
            .expand(&[b"secret store v1"], &AES_256_GCM)
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| SecretsError::Config("deriving the secret store key".into()))?;
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key)
                .map_err(|_| SecretsError::Config("the secret store key".into()))?,
        );
        create_private_dir(dir)?;
        Ok(Store {
            path: dir.join("secrets.json"),
            key,
        })
    }

    fn aad(arn: &str, version_id: &str) -> Vec<u8> {
        format!("{arn}\n{version_id}").into_bytes()
    }

    /// Everything stored; entries that do not decrypt (another device key) are skipped.
    pub fn load(&self) -> Vec<Entry> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return vec![];
        };
        let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&bytes) else {
            tracing::warn!(path = %self.path.display(), "secret store unreadable; secrets will be fetched again");
            return vec![];
        };
        let mut out = vec![];
        for item in items {
            let s = |k: &str| item[k].as_str().unwrap_or_default().to_string();
            let (arn, version_id) = (s("arn"), s("versionId"));
            let (Ok(nonce), Ok(mut sealed)) = (B64.decode(s("nonce")), B64.decode(s("sealed")))
            else {
                continue;
            };
            let Ok(nonce) = Nonce::try_assume_unique_for_key(&nonce) else {
                continue;
            };
            let Ok(plain) =
                self.key
                    .open_in_place(nonce, Aad::from(Self::aad(&arn, &version_id)), &mut sealed)
            else {
                tracing::warn!(arn = %arn, "a stored secret does not decrypt with this device's key; it will be fetched again");
                continue;
            };
            out.push(Entry {
                name: s("name"),
                stages: item["stages"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                created: item["created"].as_f64().unwrap_or_default(),
                binary: item["binary"].as_bool().unwrap_or(false),
                value: plain.to_vec(),
                arn,
                version_id,
            });
        }
        out
    }

    /// Replaces the store with `entries` (temp file, fsync, rename, directory fsync).
    pub fn save(&self, entries: &[Entry]) -> Result<(), SecretsError> {
        let rng = SystemRandom::new();
        let mut items = vec![];
        for e in entries {
            let mut nonce = [0u8; 12];
            rng.fill(&mut nonce)
                .map_err(|_| SecretsError::Store("no randomness for a nonce".into()))?;
            let mut sealed = e.value.clone();
            self.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(Self::aad(&e.arn, &e.version_id)),
                    &mut sealed,
                )
                .map_err(|_| SecretsError::Store("sealing a secret".into()))?;
            items.push(json!({
                "arn": e.arn, "name": e.name, "versionId": e.version_id, "stages": e.stages,
                "created": e.created, "binary": e.binary,
                "nonce": B64.encode(nonce), "sealed": B64.encode(&sealed),
            }));
        }
        let body = serde_json::to_vec(&items).unwrap_or_default();
        write_durable(&self.path, &body)
            .map_err(|e| SecretsError::Store(format!("{}: {e}", self.path.display())))
    }
}

fn create_private_dir(dir: &Path) -> Result<(), SecretsError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| SecretsError::Store(format!("{}: {e}", dir.display())))
}

fn write_durable(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &[u8]) -> Entry {
        Entry {
            arn: "arn:aws:secretsmanager:r:1:secret:a-XYZ".into(),
            name: "a".into(),
            version_id: "v1".into(),
            stages: vec!["AWSCURRENT".into()],
            created: 1.5,
            binary: false,
            value: value.to_vec(),
        }
    }

    #[test]
    fn values_round_trip_and_never_reach_the_disk_in_plain_text() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("key.pem");
        std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\nabc\n").unwrap();
        let store = Store::open(&d.path().join("s"), &key).unwrap();
        store.save(&[entry(b"hunter2-plaintext")]).unwrap();
        let raw = std::fs::read(d.path().join("s/secrets.json")).unwrap();
        assert!(!raw.windows(17).any(|w| w == b"hunter2-plaintext"));
        assert_eq!(store.load(), vec![entry(b"hunter2-plaintext")]);

        // Another device key reads nothing.
        std::fs::write(&key, b"another key").unwrap();
        let other = Store::open(&d.path().join("s"), &key).unwrap();
        assert!(other.load().is_empty());
    }

    #[test]
    fn a_ciphertext_moved_to_another_arn_does_not_decrypt() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("key.pem");
        std::fs::write(&key, b"k").unwrap();
        let store = Store::open(&d.path().join("s"), &key).unwrap();
        store.save(&[entry(b"v")]).unwrap();
        let path = d.path().join("s/secrets.json");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("secret:a-XYZ", "secret:b-XYZ");
        std::fs::write(&path, text).unwrap();
        assert!(store.load().is_empty());
    }
}
