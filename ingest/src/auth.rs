//! API-key authentication shared by the gRPC and HTTP collectors.
//!
//! A request carries its key in `x-api-key` or `authorization: Bearer ...`.
//! Only the SHA-256 of each key is configured; the presented key is hashed
//! and looked up, so neither the config nor a log ever holds a usable key.
//! A key is bound to one tenant and one source: the [`Principal`] it yields
//! is checked against every record, and a record naming another tenant is
//! refused on its `tenant` field while the rest of the batch goes on.

use std::{collections::HashMap, sync::Arc};

use sha2::{Digest, Sha256};

use crate::{
    IngestError,
    config::{AuthMode, IngestConfig},
};

/// Who is writing: the tenant and source a key is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Arc<str>,
    pub source: Arc<str>,
}

/// Resolves presented keys to principals.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    keys: Arc<HashMap<[u8; 32], Principal>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Authenticator {
    /// From a validated config.
    pub fn from_config(cfg: &IngestConfig) -> Self {
        let mut keys = HashMap::new();
        for (tenant, t) in &cfg.tenants {
            for k in &t.api_keys {
                let mut digest = [0u8; 32];
                if hex::decode_to_slice(&k.sha256, &mut digest).is_ok() {
                    keys.insert(
                        digest,
                        Principal {
                            tenant: tenant.as_str().into(),
                            source: k.source.as_str().into(),
                        },
                    );
                }
            }
        }
        Self {
            mode: cfg.auth,
            keys: Arc::new(keys),
        }
    }

    /// The principal for a presented key. No key is fine only in `none`
    /// mode; a key that is sent is always checked.
    pub fn authenticate(&self, key: Option<&str>) -> Result<Option<Principal>, IngestError> {
        let key = key.map(str::trim).filter(|k| !k.is_empty());
        match key {
            None if self.mode == AuthMode::None => Ok(None),
            None => Err(IngestError::Unauthenticated("an API key is required")),
            Some(k) => {
                let digest: [u8; 32] = Sha256::digest(k.as_bytes()).into();
                self.keys
                    .get(&digest)
                    .cloned()
                    .map(Some)
                    .ok_or(IngestError::Unauthenticated("unknown API key"))
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

/// The lower-case hex SHA-256 of a key, as it goes in the config.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeyConfig, TenantConfig};

    #[test]
    fn keys_resolve_to_their_tenant_and_source_only() {
        let cfg: IngestConfig = {
            #[derive(serde::Deserialize)]
            struct W {
                ingest: IngestConfig,
            }
            let mut c = xoflow_common::config::from_toml::<W>("")
                .expect("defaults")
                .ingest;
            c.auth = AuthMode::ApiKey;
            c.tenants.insert(
                "acme".into(),
                TenantConfig {
                    api_keys: vec![ApiKeyConfig {
                        source: "pos".into(),
                        sha256: key_hash("k-acme-pos"),
                    }],
                    ..Default::default()
                },
            );
            c
        };
        let a = Authenticator::from_config(&cfg);
        let p = a
            .authenticate(Some("k-acme-pos"))
            .expect("ok")
            .expect("principal");
        assert_eq!((&*p.tenant, &*p.source), ("acme", "pos"));
        assert!(a.authenticate(Some("nope")).is_err());
        assert!(a.authenticate(None).is_err());
        assert!(format!("{a:?}").contains("keys: 1"));
        assert_eq!(key_from_headers(None, Some("Bearer abc")), Some("abc"));
    }
}
