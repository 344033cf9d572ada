//! Per-component IPC tokens (`SVCUID`), minted at each core start and held only in memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use rand::Rng;

const TOKEN_LEN: usize = 16;
const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

#[derive(Default)]
struct Tokens {
    by_token: HashMap<String, String>,
    by_component: HashMap<String, String>,
    external: HashSet<String>,
}

/// Token ↔ identity map. Tokens are 16 random upper-case alphanumerics (like classic), never
/// persisted, so a restarted core invalidates every old token.
#[derive(Default)]
pub struct TokenRegistry {
    inner: RwLock<Tokens>,
}

impl std::fmt::Debug for TokenRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens.
        f.debug_struct("TokenRegistry").finish_non_exhaustive()
    }
}

impl TokenRegistry {
    pub fn new() -> TokenRegistry {
        TokenRegistry::default()
    }

    /// The token of `component`, minted on first use; the same token for the life of the process.
    pub fn mint(&self, component: &str) -> String {
        if let Some(t) = self.read().by_component.get(component) {
            return t.clone();
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = inner.by_component.get(component) {
            return t.clone();
        }
        let mut rng = rand::rng();
        let token = loop {
            let t: String = (0..TOKEN_LEN)
                .map(|_| TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())] as char)
                .collect();
            if !inner.by_token.contains_key(&t) {
                break t;
            }
        };
        inner.by_token.insert(token.clone(), component.to_string());
        inner
            .by_component
            .insert(component.to_string(), token.clone());
        token
    }

    /// The identity a token stands for.
    pub fn identity(&self, token: &str) -> Option<String> {
        self.read().by_token.get(token).cloned()
    }

    /// Registers a client that is not a component (e.g. a CLI client, identity
    /// `greengrass-cli#<n>`). External identities bypass `aws.greengrass.Cli` authorization.
    pub fn register_external(&self, identity: &str, token: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner
            .by_token
            .insert(token.to_string(), identity.to_string());
        inner.external.insert(identity.to_string());
    }

    /// Whether `identity` was registered with [`TokenRegistry::register_external`].
    pub fn is_external(&self, identity: &str) -> bool {
        self.read().external.contains(identity)
    }

    /// The environment a component's processes need for IPC auth: `SVCUID` and
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN` (same token, used by the token exchange service).
    pub fn component_env(&self, component: &str) -> BTreeMap<String, String> {
        let token = self.mint(component);
        BTreeMap::from([
            ("SVCUID".to_string(), token.clone()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN".to_string(), token),
        ])
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tokens> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_is_idempotent_and_well_formed() {
        let reg = TokenRegistry::new();
        let a = reg.mint("com.example.A");
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        assert_eq!(reg.mint("com.example.A"), a);
        let b = reg.mint("com.example.B");
        assert_ne!(a, b);
        assert_eq!(reg.identity(&a).as_deref(), Some("com.example.A"));
        assert_eq!(reg.identity(&b).as_deref(), Some("com.example.B"));
        assert_eq!(reg.identity("NOPE"), None);
    }

    #[test]
    fn tokens_differ_between_registries() {
        // A new registry is a new core start: old tokens must not carry over.
        let first = TokenRegistry::new().mint("c");
        let second = TokenRegistry::new();
        assert_eq!(second.identity(&first), None);
    }

    #[test]
    fn external_and_env() {
        let reg = TokenRegistry::new();
        reg.register_external("greengrass-cli#1", "clitoken");
        assert_eq!(
            reg.identity("clitoken").as_deref(),
            Some("greengrass-cli#1")
        );
        assert!(reg.is_external("greengrass-cli#1"));
        assert!(!reg.is_external("c"));
        let env = reg.component_env("c");
        assert_eq!(env["SVCUID"], reg.mint("c"));
        assert_eq!(env["AWS_CONTAINER_AUTHORIZATION_TOKEN"], reg.mint("c"));
    }
}
