//! Pagination as botocore's paginators drive it: an opaque token (`nextToken` / `marker`) and a
//! page size (`maxResults` / `pageSize`). The token is the base64 of the last key returned; the
//! next page starts after it, so pages stay stable while other items are added.

use crate::{RegistryError, Result};
use base64::Engine;

/// A page request: `token` from the previous answer, `size` clamped to `1..=max`.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub token: Option<String>,
    pub size: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// None on the last page.
    pub next_token: Option<String>,
}

impl PageRequest {
    /// The key to start after, decoded from the token.
    pub(crate) fn after(&self) -> Result<String> {
        match &self.token {
            None => Ok(String::new()),
            Some(t) => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    RegistryError::Invalid(format!(
                        "pagination token {t:?} is not one this service returned; \
                         start again without it"
                    ))
                }),
        }
    }

    pub(crate) fn limit(&self, default: u32, max: u32) -> Result<usize> {
        match self.size {
            None => Ok(default as usize),
            Some(n) if (1..=max).contains(&n) => Ok(n as usize),
            Some(n) => Err(RegistryError::Invalid(format!(
                "page size {n} is out of range; use 1 to {max}"
            ))),
        }
    }
}

/// Builds a page from up to `limit + 1` items in key order: the extra one only says there is more.
pub(crate) fn finish<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let next_token = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|last| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key(last)))
    } else {
        None
    };
    Page { items, next_token }
}
