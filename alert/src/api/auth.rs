//! Who may act on alerts: the collectors' API keys, bound to tenants.
//!
//! Semantics as the collectors' (`ingest/src/auth.rs`): a request carries
//! its key in `x-api-key` or `Authorization: Bearer ...`; only the SHA-256
//! of each key is held, so neither the configuration nor a log ever holds a
//! usable key. A key is bound to one tenant: it sees that tenant's alerts
//! only (another tenant's alert is "not found", not "forbidden": its
//! existence is not revealed). In open mode (no authentication configured:
//! development and demos) a request without a key may act on any tenant's
//! alert; a key that is sent is checked all the same.

use std::{collections::HashMap, sync::Arc};

use sha2::{Digest, Sha256};

/// The API keys the case API accepts: SHA-256 of the key → tenant.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<HashMap<[u8; 32], String>>,
    /// No key is needed (any caller, any tenant); sent keys are checked.
    open: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .field("open", &self.open)
            .finish()
    }
}

/// A configured key hash that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("API key hash for tenant {tenant} is not 64 hex digits")]
pub struct InvalidKeyHash {
    pub tenant: String,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No key, in open mode: may act on any tenant's alert.
    Anyone,
    /// A key bound to this tenant.
    Tenant(String),
}

impl Caller {
    /// Whether the caller may see `tenant`'s alerts.
    pub fn may_see(&self, tenant: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Tenant(t) => t == tenant,
        }
    }
}

/// Why a caller was refused (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required (x-api-key or Authorization: Bearer)")]
    Missing,
    #[error("unknown API key")]
    Unknown,
}

impl ApiKeys {
    /// Keys required: every request must carry one of `keys`.
    pub fn new(keys: HashMap<[u8; 32], String>) -> Self {
        ApiKeys {
            keys: Arc::new(keys),
            open: false,
        }
    }

    /// Open mode: no key needed. The keys given are still checked when a
    /// request sends one.
    pub fn open(keys: HashMap<[u8; 32], String>) -> Self {
        ApiKeys {
            keys: Arc::new(keys),
            open: true,
        }
    }

    /// From `(sha256 hex, tenant)` pairs, as the collectors' tenants list
    /// them (`[[ingest.tenants.<t>.api_keys]] sha256 = ...`).
    pub fn from_hex<'a>(
        open: bool,
        hashes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, InvalidKeyHash> {
        let mut keys = HashMap::new();
        for (hex_hash, tenant) in hashes {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_hash.trim(), &mut digest).map_err(|_| InvalidKeyHash {
                tenant: tenant.to_owned(),
            })?;
            keys.insert(digest, tenant.to_owned());
        }
        Ok(if open {
            Self::open(keys)
        } else {
            Self::new(keys)
        })
    }

    /// The caller presenting `key` (trimmed; empty is no key).
    pub fn authenticate(&self, key: Option<&str>) -> Result<Caller, AuthError> {
        match key.map(str::trim).filter(|k| !k.is_empty()) {
            None if self.open => Ok(Caller::Anyone),
            None => Err(AuthError::Missing),
            Some(k) => {
                let digest: [u8; 32] = Sha256::digest(k.as_bytes()).into();
                self.keys
                    .get(&digest)
                    .map(|t| Caller::Tenant(t.clone()))
                    .ok_or(AuthError::Unknown)
            }
        }
    }
}

/// The key from header values: `x-api-key`, else a bearer token.
pub fn key_from_headers<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    x_api_key.or_else(|| {
        authorization.and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    #[test]
    fn keys_resolve_to_their_tenant_only() {
        let (a, b) = (hash("k-acme"), hash("k-hotpot"));
        let keys =
            ApiKeys::from_hex(false, [(a.as_str(), "acme"), (b.as_str(), "hotpot")]).expect("keys");
        assert_eq!(
            keys.authenticate(Some("k-acme")),
            Ok(Caller::Tenant("acme".into()))
        );
        assert_eq!(
            keys.authenticate(Some(" k-hotpot ")),
            Ok(Caller::Tenant("hotpot".into()))
        );
        assert_eq!(keys.authenticate(Some("nope")), Err(AuthError::Unknown));
        assert_eq!(keys.authenticate(None), Err(AuthError::Missing));
        assert_eq!(keys.authenticate(Some("")), Err(AuthError::Missing));
        assert!(Caller::Tenant("acme".into()).may_see("acme"));
        assert!(!Caller::Tenant("acme".into()).may_see("hotpot"));
        assert!(format!("{keys:?}").contains("keys: 2"));
    }

    #[test]
    fn open_mode_lets_anyone_in_but_still_checks_a_sent_key() {
        let a = hash("k-acme");
        let keys = ApiKeys::from_hex(true, [(a.as_str(), "acme")]).expect("keys");
        assert_eq!(keys.authenticate(None), Ok(Caller::Anyone));
        assert!(Caller::Anyone.may_see("anyone"));
        assert_eq!(
            keys.authenticate(Some("k-acme")),
            Ok(Caller::Tenant("acme".into()))
        );
        assert_eq!(keys.authenticate(Some("wrong")), Err(AuthError::Unknown));
    }

    #[test]
    fn bad_hashes_and_header_forms() {
        assert_eq!(
            ApiKeys::from_hex(false, [("xyz", "acme")]).map(|_| ()),
            Err(InvalidKeyHash {
                tenant: "acme".into()
            })
        );
        assert_eq!(key_from_headers(Some("k"), Some("Bearer b")), Some("k"));
        assert_eq!(key_from_headers(None, Some("Bearer b")), Some("b"));
        assert_eq!(key_from_headers(None, Some("Basic b")), None);
    }
}
