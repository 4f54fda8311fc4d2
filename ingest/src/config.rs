//! Collector settings (`[ingest]`), including the tenants: their hashing
//! secrets, their sources' API keys (stored hashed) and their journey maps.
//!
//! Everything here is plain data validated by [`IngestConfig::validate`]
//! (pure, no I/O) so that a typo in a journey rule stops start-up with the
//! path of the offending setting instead of silently mis-attributing events.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::Deserialize;

/// Settings of the collector APIs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address of the gRPC collector API; port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP collector API (`/v1/events`, `/v1/sources/...`);
    /// port 0 picks a free port.
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// Most events in one request, so one caller cannot hold the whole
    /// in-flight budget.
    pub max_batch_events: usize,
    /// Largest encoded gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest HTTP request body accepted, in bytes, after gzip
    /// decompression too; beyond it the answer is 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events being judged or awaiting Kafka acknowledgement at once
    /// across all requests, taken at the door without waiting: beyond it a
    /// request is refused at once (RESOURCE_EXHAUSTED / 429) instead of
    /// queueing.
    pub max_in_flight_events: usize,
    /// Most request bytes (as received: `Content-Length`, or
    /// `max_body_bytes` for a body of unknown length; the encoded gRPC
    /// message) admitted and not yet answered, across all requests.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// How long judging and delivering one request may take; past it the
    /// caller gets UNAVAILABLE / 503 (`deadline_exceeded`) with `Retry-After` and nothing
    /// of the request is acknowledged.
    #[serde(with = "humantime_serde", default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers, on a new
    /// connection or between requests of a kept-alive one (so it is also
    /// the HTTP idle timeout); past it the connection is closed. Slow or idle clients otherwise hold a file
    /// descriptor each forever.
    #[serde(with = "humantime_serde", default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body once its
    /// headers are in; past it the answer is 408 (`body_timeout`).
    #[serde(with = "humantime_serde", default = "default_body_read_timeout")]
    pub body_read_timeout: Duration,
    /// Most connections open at once on each collector port; one more is
    /// answered `503` (`connection_limit`, HTTP) or closed at once (gRPC)
    /// and counted. Keep it below the process's file-descriptor limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How far in the future `occurred_at` may be: clock skew allowance.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// How far in the past `occurred_at` may be on the live lane.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How far in the past `occurred_at` may be for bulk imports (the
    /// backfill lane), which exist to load history.
    #[serde(with = "humantime_serde", default = "default_max_backfill_age")]
    pub max_backfill_age: Duration,
    /// How long the producer waits for more records before sending a
    /// batch (`linger.ms`). Every request waits for its acknowledgement, so
    /// a caller sending one event per request pays this each time.
    #[serde(with = "humantime_serde", default = "default_linger")]
    pub linger: Duration,
    /// Key for the HMAC-SHA256 of weak identifiers of tenants that have no
    /// secret of their own. Must stay stable: changing it breaks joins.
    #[serde(default = "default_hash_secret")]
    pub hash_secret: Secret,
    /// How callers prove who they are: `none` (development only: any caller
    /// may write any tenant) or `api-key`.
    #[serde(default)]
    pub auth: AuthMode,
    /// The tenants, by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// TLS on both collector APIs; plaintext when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Where the collectors' certificate and key are (PEM). Both APIs serve the
/// same identity; the files are read and checked at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

/// How the collector authenticates callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Nobody is authenticated; a key, if sent, is still checked. For local
    /// development and the demo only: start-up warns loudly.
    #[default]
    None,
    /// Every request carries `x-api-key` (or `authorization: Bearer ...`)
    /// matching a configured key.
    ApiKey,
}

/// One tenant: a brand or business unit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's own HMAC key for weak identifiers, so two tenants'
    /// hashes of one address never join. Falls back to `ingest.hash_secret`.
    #[serde(default)]
    pub hash_secret: Option<Secret>,
    /// The API keys of the tenant's sources.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// The tenant's journey map: touchpoints by name.
    #[serde(default)]
    pub touchpoints: BTreeMap<String, TouchpointConfig>,
    /// Rules resolving the touchpoint of an event that names none; the first
    /// matching rule wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The tenant's IANA time zone (`Asia/Shanghai`): the days, weeks and
    /// months of every BI view and documented query are the tenant's local
    /// ones, so that "Tuesday" runs midnight to midnight where the brand
    /// is. Ingest stamps each event with the zone's UTC offset at its time
    /// (`Event.utc_offset_seconds`, daylight saving included). Default UTC.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// One source's API key. Only its SHA-256 is stored, so the config file is
/// no credential.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The source this key belongs to; events written with it carry this
    /// source.
    pub source: String,
    /// Lower-case hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even the hash stays out of logs: it would let an attacker test
        // guesses offline.
        f.debug_struct("ApiKeyConfig")
            .field("source", &self.source)
            .field("sha256", &"<redacted>")
            .finish()
    }
}

/// One touchpoint of a tenant's journey map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchpointConfig {
    /// The journey it belongs to, e.g. "online-purchase".
    pub journey: String,
    /// The stage of that journey, e.g. "checkout".
    pub stage: String,
    /// The department that owns the touchpoint and closes the loop on it;
    /// written to the event's `department` attribute.
    pub department: String,
    /// How the customer reaches it: app, web, store, call-centre, social,
    /// email, sms. Optional.
    #[serde(default)]
    pub channel: Option<String>,
}

/// One touchpoint mapping rule. Every condition given must match; at least
/// one must be given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The touchpoint (a key of `touchpoints`) the rule resolves to.
    pub touchpoint: String,
    /// Click path pattern: exact, or a prefix ending in `*`
    /// (`/checkout/*`).
    #[serde(default)]
    pub path: Option<String>,
    /// Order status, e.g. "delivered".
    #[serde(default)]
    pub order_status: Option<String>,
    /// Survey definition id.
    #[serde(default)]
    pub survey_id: Option<String>,
    /// Call-centre queue.
    #[serde(default)]
    pub call_queue: Option<String>,
    /// Social platform.
    #[serde(default)]
    pub social_platform: Option<String>,
    /// The event's source.
    #[serde(default)]
    pub source: Option<String>,
}

/// A secret string: never printed by `Debug`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The development key. Start-up warns when it is in use.
pub const DEV_HASH_SECRET: &str = "xoflow-dev-secret-change-me";

fn default_hash_secret() -> Secret {
    Secret::new(DEV_HASH_SECRET)
}

fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

const fn default_max_body_bytes() -> usize {
    16 * 1024 * 1024
}

const fn default_max_in_flight_bytes() -> usize {
    256 * 1024 * 1024
}

const fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

const fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

const fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}

const fn default_max_connections() -> usize {
    10_000
}

const fn default_linger() -> Duration {
    Duration::from_millis(1)
}

const fn default_max_backfill_age() -> Duration {
    Duration::from_secs(20 * 365 * 86_400)
}

/// The order-status names a rule may use.
pub const ORDER_STATUSES: [&str; 6] = [
    "placed",
    "paid",
    "shipped",
    "delivered",
    "cancelled",
    "returned",
];

/// The channel names a touchpoint may use.
pub const CHANNELS: [&str; 7] = [
    "app",
    "web",
    "store",
    "call-centre",
    "social",
    "email",
    "sms",
];

/// A setting that deserialises but cannot work; the message starts with
/// the setting's path (`ingest.tenants.acme.rules[0].touchpoint ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl IngestConfig {
    /// Checks values that deserialise but cannot work. Pure: no I/O.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        self.check().map_err(InvalidConfig)
    }

    fn check(&self) -> Result<(), String> {
        if self.max_batch_events == 0 {
            return Err("ingest.max_batch_events must be at least 1".into());
        }
        if self.max_in_flight_events < self.max_batch_events {
            return Err(format!(
                "ingest.max_in_flight_events ({}) must be at least ingest.max_batch_events ({})",
                self.max_in_flight_events, self.max_batch_events
            ));
        }
        let largest = self.max_body_bytes.max(self.max_message_bytes);
        if self.max_in_flight_bytes < largest {
            return Err(format!(
                "ingest.max_in_flight_bytes ({}) must be at least the largest request (max_body_bytes, max_message_bytes: {largest})",
                self.max_in_flight_bytes
            ));
        }
        for (name, d) in [
            ("request_timeout", self.request_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("ingest.{name} must be more than 0"));
            }
        }
        if self.max_connections == 0 {
            return Err("ingest.max_connections must be at least 1".into());
        }
        if self.hash_secret.0.len() < 16 {
            return Err("ingest.hash_secret must be at least 16 bytes".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("ingest.max_body_bytes must be at least 1024".into());
        }
        let mut key_hashes = std::collections::HashSet::new();
        for (name, t) in &self.tenants {
            let at = format!("ingest.tenants.{name}");
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(format!("{at}: a tenant name is 1-64 printable characters"));
            }
            if let Some(s) = &t.hash_secret
                && s.0.len() < 16
            {
                return Err(format!("{at}.hash_secret must be at least 16 bytes"));
            }
            if let Some(z) = &t.time_zone
                && crate::tenant::parse_zone(z).is_none()
            {
                return Err(format!(
                    "{at}.time_zone {z:?} is not an IANA time zone name (e.g. \"Asia/Shanghai\", \"UTC\")"
                ));
            }
            for (i, k) in t.api_keys.iter().enumerate() {
                let at = format!("{at}.api_keys[{i}]");
                if k.source.is_empty() || k.source.len() > 64 {
                    return Err(format!("{at}.source must be 1-64 bytes"));
                }
                if k.sha256.len() != 64
                    || !k
                        .sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(format!(
                        "{at}.sha256 must be the lower-case hex SHA-256 of the key (64 characters)"
                    ));
                }
                if !key_hashes.insert(k.sha256.as_str()) {
                    return Err(format!(
                        "{at}: the same key is configured twice; a key is bound to one tenant and source"
                    ));
                }
            }
            for (tp_name, tp) in &t.touchpoints {
                let at = format!("{at}.touchpoints.{tp_name}");
                for (field, v) in [
                    ("journey", &tp.journey),
                    ("stage", &tp.stage),
                    ("department", &tp.department),
                ] {
                    if v.is_empty() || v.len() > 64 {
                        return Err(format!("{at}.{field} must be 1-64 bytes"));
                    }
                }
                if let Some(c) = &tp.channel
                    && !CHANNELS.contains(&c.as_str())
                {
                    return Err(format!(
                        "{at}.channel {c:?} is not one of {}",
                        CHANNELS.join(", ")
                    ));
                }
            }
            for (i, r) in t.rules.iter().enumerate() {
                let at = format!("{at}.rules[{i}]");
                if !t.touchpoints.contains_key(&r.touchpoint) {
                    let known: Vec<&str> = t.touchpoints.keys().map(String::as_str).collect();
                    return Err(format!(
                        "{at}.touchpoint {:?} is not defined in {name}'s touchpoints (known: {})",
                        r.touchpoint,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
                let conditions = [
                    &r.path,
                    &r.order_status,
                    &r.survey_id,
                    &r.call_queue,
                    &r.social_platform,
                    &r.source,
                ];
                if conditions.iter().all(|c| c.is_none()) {
                    return Err(format!(
                        "{at} has no condition: give at least one of path, order_status, survey_id, call_queue, social_platform, source"
                    ));
                }
                if let Some(p) = &r.path {
                    let star = p.find('*');
                    if !p.starts_with('/') || star.is_some_and(|s| s != p.len() - 1) {
                        return Err(format!(
                            "{at}.path {p:?} must start with '/' and may only end with '*'"
                        ));
                    }
                }
                if let Some(s) = &r.order_status
                    && !ORDER_STATUSES.contains(&s.as_str())
                {
                    return Err(format!(
                        "{at}.order_status {s:?} is not one of {}",
                        ORDER_STATUSES.join(", ")
                    ));
                }
            }
        }
        if self.auth == AuthMode::ApiKey && key_hashes.is_empty() {
            return Err(
                "ingest.auth is \"api-key\" but no tenant has api_keys: nobody could write".into(),
            );
        }
        Ok(())
    }

    /// Whether the development hash secret is in use anywhere.
    pub fn uses_dev_secret(&self) -> bool {
        self.hash_secret.0 == DEV_HASH_SECRET
            || self.tenants.values().any(|t| {
                t.hash_secret
                    .as_ref()
                    .is_some_and(|s| s.0 == DEV_HASH_SECRET)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> IngestConfig {
        IngestConfig {
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            max_batch_events: 10,
            max_message_bytes: 1 << 20,
            max_body_bytes: 1 << 20,
            max_in_flight_events: 100,
            max_in_flight_bytes: 4 << 20,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 100,
            max_future_skew: Duration::from_secs(60),
            max_age: Duration::from_secs(86_400),
            max_backfill_age: Duration::from_secs(86_400 * 3650),
            linger: Duration::from_millis(1),
            hash_secret: Secret::new("0123456789abcdef"),
            auth: AuthMode::None,
            tenants: BTreeMap::new(),
            tls: None,
        }
    }

    fn tenant(toml_rules: &str) -> TenantConfig {
        TenantConfig {
            touchpoints: [(
                "checkout".to_string(),
                TouchpointConfig {
                    journey: "online-purchase".into(),
                    stage: "checkout".into(),
                    department: "e-commerce".into(),
                    channel: Some("web".into()),
                },
            )]
            .into(),
            rules: vec![match toml_rules {
                "undefined" => RuleConfig {
                    touchpoint: "chekout".into(),
                    path: Some("/checkout/*".into()),
                    ..rule()
                },
                "empty" => rule(),
                "bad-path" => RuleConfig {
                    path: Some("/a/*/b".into()),
                    ..rule()
                },
                "bad-status" => RuleConfig {
                    order_status: Some("lost".into()),
                    ..rule()
                },
                _ => RuleConfig {
                    path: Some("/checkout/*".into()),
                    ..rule()
                },
            }],
            ..Default::default()
        }
    }

    fn rule() -> RuleConfig {
        RuleConfig {
            touchpoint: "checkout".into(),
            path: None,
            order_status: None,
            survey_id: None,
            call_queue: None,
            social_platform: None,
            source: None,
        }
    }

    #[test]
    fn journey_mistakes_are_named_with_their_path() {
        for (case, expect) in [
            (
                "undefined",
                "ingest.tenants.acme.rules[0].touchpoint \"chekout\" is not defined in acme's touchpoints (known: checkout)",
            ),
            ("empty", "ingest.tenants.acme.rules[0] has no condition"),
            ("bad-path", "ingest.tenants.acme.rules[0].path \"/a/*/b\""),
            (
                "bad-status",
                "ingest.tenants.acme.rules[0].order_status \"lost\"",
            ),
        ] {
            let mut c = base();
            c.tenants.insert("acme".into(), tenant(case));
            let err = c.validate().expect_err(case).0;
            assert!(err.starts_with(expect), "{case}: {err}");
        }
        let mut c = base();
        c.tenants.insert("acme".into(), tenant("ok"));
        c.validate().expect("valid");
    }

    #[test]
    fn api_key_mode_needs_keys_and_hashes_must_be_hex() {
        let mut c = base();
        c.auth = AuthMode::ApiKey;
        assert!(
            c.validate()
                .expect_err("no keys")
                .0
                .contains("no tenant has api_keys")
        );
        c.tenants.insert(
            "acme".into(),
            TenantConfig {
                api_keys: vec![ApiKeyConfig {
                    source: "pos".into(),
                    sha256: "not-hex".into(),
                }],
                ..Default::default()
            },
        );
        assert!(
            c.validate()
                .expect_err("bad hash")
                .0
                .contains("api_keys[0].sha256")
        );
    }

    #[test]
    fn secrets_never_print() {
        let mut c = base();
        c.hash_secret = Secret::new("super-secret-value-123");
        c.tenants.insert(
            "acme".into(),
            TenantConfig {
                hash_secret: Some(Secret::new("tenant-secret-value-456")),
                api_keys: vec![ApiKeyConfig {
                    source: "pos".into(),
                    sha256: "ab".repeat(32),
                }],
                ..Default::default()
            },
        );
        let printed = format!("{c:?}");
        assert!(!printed.contains("super-secret"), "{printed}");
        assert!(!printed.contains("tenant-secret"), "{printed}");
        assert!(!printed.contains(&"ab".repeat(32)), "{printed}");
    }
}
