//! Tenants as the collectors use them: each one's keyed hash and journey
//! map, compiled once from [`crate::config::TenantConfig`] at start-up.
//!
//! Touchpoint resolution is pure: given an event that names no touchpoint,
//! the first of the tenant's rules whose conditions all match names it, and
//! the touchpoint's owning department is written to the event's
//! `department` attribute so the loop can be closed by the right team.

use std::collections::HashMap;

use chrono::{Offset, TimeZone};
use chrono_tz::Tz;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use xoflow_proto::v1::{Channel, Event, OrderStatus, Touchpoint, event::Payload};

use crate::config::{IngestConfig, RuleConfig, TouchpointConfig};

/// The attribute that carries the owning department of the touchpoint.
pub const DEPARTMENT_ATTRIBUTE: &str = "department";

/// Why tenants cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// HMAC accepts a key of any length but none.
    #[error("a hash secret must not be empty")]
    EmptySecret,
}

/// Every tenant, plus the fallback used for tenants not configured (in
/// `auth = "none"` mode only: with API keys every writer has a tenant).
#[derive(Clone)]
pub struct Tenants {
    by_name: HashMap<String, Tenant>,
    fallback: Tenant,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One tenant's compiled settings.
#[derive(Clone)]
pub struct Tenant {
    /// HMAC pre-keyed with the tenant's secret: a hash costs no key set-up.
    pub(crate) mac: Hmac<Sha256>,
    rules: Vec<Rule>,
    /// The tenant's time zone: its offset at an event's time is stamped on
    /// the event.
    zone: Tz,
}

/// An IANA time zone by name (`Asia/Shanghai`, `UTC`), from the database
/// compiled into the binary.
pub fn parse_zone(name: &str) -> Option<Tz> {
    name.parse().ok()
}

#[derive(Clone)]
struct Rule {
    path: Option<PathPattern>,
    order_status: Option<i32>,
    survey_id: Option<String>,
    call_queue: Option<String>,
    social_platform: Option<String>,
    source: Option<String>,
    touchpoint: Touchpoint,
    department: String,
}

#[derive(Clone)]
enum PathPattern {
    Exact(String),
    Prefix(String),
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            // "/checkout/*" matches "/checkout" and everything below it.
            PathPattern::Prefix(p) => {
                path.starts_with(p.as_str()) || path == p.trim_end_matches('/')
            }
        }
    }
}

impl Tenants {
    /// Compiles the tenants of a validated config. Fails only for an empty
    /// key (HMAC accepts any other length).
    pub fn from_config(cfg: &IngestConfig) -> Result<Self, TenantError> {
        let fallback_secret = cfg.hash_secret.expose().as_bytes();
        let mut by_name = HashMap::with_capacity(cfg.tenants.len());
        for (name, t) in &cfg.tenants {
            let secret = t
                .hash_secret
                .as_ref()
                .map_or(fallback_secret, |s| s.expose().as_bytes());
            let rules = t
                .rules
                .iter()
                .filter_map(|r| t.touchpoints.get(&r.touchpoint).map(|tp| compile(r, tp)))
                .collect();
            by_name.insert(
                name.clone(),
                Tenant {
                    mac: mac(secret)?,
                    rules,
                    // Checked by the config's validation; UTC otherwise.
                    zone: t
                        .time_zone
                        .as_deref()
                        .and_then(parse_zone)
                        .unwrap_or(Tz::UTC),
                },
            );
        }
        Ok(Self {
            by_name,
            fallback: Tenant {
                mac: mac(fallback_secret)?,
                rules: Vec::new(),
                zone: Tz::UTC,
            },
        })
    }

    /// A single anonymous tenant set with one secret, for tests and tools.
    pub fn single(secret: &[u8]) -> Result<Self, TenantError> {
        Ok(Self {
            by_name: HashMap::new(),
            fallback: Tenant {
                mac: mac(secret)?,
                rules: Vec::new(),
                zone: Tz::UTC,
            },
        })
    }

    /// The named tenant, or the fallback.
    pub fn get(&self, name: &str) -> &Tenant {
        self.by_name.get(name).unwrap_or(&self.fallback)
    }
}

fn mac(secret: &[u8]) -> Result<Hmac<Sha256>, TenantError> {
    if secret.is_empty() {
        return Err(TenantError::EmptySecret);
    }
    <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| TenantError::EmptySecret)
}

fn compile(r: &RuleConfig, tp: &TouchpointConfig) -> Rule {
    Rule {
        path: r.path.as_ref().map(|p| match p.strip_suffix('*') {
            Some(prefix) => PathPattern::Prefix(prefix.to_owned()),
            None => PathPattern::Exact(p.clone()),
        }),
        order_status: r.order_status.as_ref().and_then(|s| {
            OrderStatus::from_str_name(&format!("ORDER_STATUS_{}", s.to_ascii_uppercase()))
                .map(|s| s as i32)
        }),
        survey_id: r.survey_id.clone(),
        call_queue: r.call_queue.clone(),
        social_platform: r.social_platform.clone(),
        source: r.source.clone(),
        touchpoint: Touchpoint {
            journey: tp.journey.clone(),
            stage: tp.stage.clone(),
            touchpoint: r.touchpoint.clone(),
            channel: tp
                .channel
                .as_ref()
                .and_then(|c| {
                    Channel::from_str_name(&format!(
                        "CHANNEL_{}",
                        c.replace('-', "_").to_ascii_uppercase()
                    ))
                })
                .map_or(0, |c| c as i32),
        },
        department: tp.department.clone(),
    }
}

impl Tenant {
    /// The tenant's offset from UTC at `unix_ms`, in seconds (daylight
    /// saving included).
    pub fn utc_offset_seconds(&self, unix_ms: i64) -> i32 {
        match self.zone.timestamp_millis_opt(unix_ms).single() {
            Some(t) => t.offset().fix().local_minus_utc(),
            None => 0,
        }
    }

    /// Names the event's touchpoint from the journey rules when the source
    /// named none. Returns whether a rule matched.
    pub fn resolve_touchpoint(&self, e: &mut Event) -> bool {
        if e.touchpoint
            .as_ref()
            .is_some_and(|t| !t.touchpoint.is_empty())
        {
            return false;
        }
        let Some(rule) = self.rules.iter().find(|r| r.matches(e)) else {
            return false;
        };
        let channel = e.touchpoint.as_ref().map_or(0, |t| t.channel);
        let mut tp = rule.touchpoint.clone();
        if channel != 0 {
            // The source knows best how the customer reached it.
            tp.channel = channel;
        }
        e.touchpoint = Some(tp);
        e.attributes
            .entry(DEPARTMENT_ATTRIBUTE.to_owned())
            .or_insert_with(|| rule.department.clone());
        true
    }
}

impl Rule {
    fn matches(&self, e: &Event) -> bool {
        let p = e.payload.as_ref();
        let path_ok = self.path.as_ref().is_none_or(|pat| match p {
            Some(Payload::Click(c)) => pat.matches(&c.path),
            _ => false,
        });
        let status_ok = self.order_status.is_none_or(|s| match p {
            Some(Payload::Order(o)) => o.status == s,
            _ => false,
        });
        let survey_ok = self.survey_id.as_ref().is_none_or(|id| match p {
            Some(Payload::Survey(s)) => &s.survey_id == id,
            _ => false,
        });
        let queue_ok = self.call_queue.as_ref().is_none_or(|q| match p {
            Some(Payload::Call(c)) => &c.queue == q,
            _ => false,
        });
        let platform_ok = self.social_platform.as_ref().is_none_or(|pl| match p {
            Some(Payload::Social(s)) => &s.platform == pl,
            _ => false,
        });
        let source_ok = self.source.as_ref().is_none_or(|s| &e.source == s);
        path_ok && status_ok && survey_ok && queue_ok && platform_ok && source_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xoflow_proto::v1::{ClickEvent, Order};

    fn tenants() -> Tenants {
        let cfg: IngestConfig = xoflow_common::config::from_toml::<Wrapper>(
            r#"
[ingest.tenants.testco.touchpoints.checkout]
journey = "online-purchase"
stage = "checkout"
department = "e-commerce"
channel = "web"
[ingest.tenants.testco.touchpoints.delivery]
journey = "online-purchase"
stage = "fulfilment"
department = "logistics"
[[ingest.tenants.testco.rules]]
touchpoint = "checkout"
path = "/checkout/*"
[[ingest.tenants.testco.rules]]
touchpoint = "delivery"
order_status = "delivered"
"#,
        )
        .expect("config")
        .ingest;
        cfg.validate().expect("valid");
        Tenants::from_config(&cfg).expect("tenants")
    }

    /// The other sections of the file are ignored.
    #[derive(serde::Deserialize)]
    struct Wrapper {
        ingest: IngestConfig,
    }

    #[test]
    fn rules_name_touchpoint_and_department() {
        let t = tenants();
        let mut click = Event {
            tenant: "testco".into(),
            payload: Some(Payload::Click(ClickEvent {
                path: "/checkout/pay".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(t.get("testco").resolve_touchpoint(&mut click));
        let tp = click.touchpoint.as_ref().expect("resolved");
        assert_eq!(
            (tp.stage.as_str(), tp.touchpoint.as_str()),
            ("checkout", "checkout")
        );
        assert_eq!(tp.channel, Channel::Web as i32);
        assert_eq!(click.attributes[DEPARTMENT_ATTRIBUTE], "e-commerce");

        let mut order = Event {
            payload: Some(Payload::Order(Order {
                status: OrderStatus::Delivered as i32,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(t.get("testco").resolve_touchpoint(&mut order));
        assert_eq!(order.attributes[DEPARTMENT_ATTRIBUTE], "logistics");

        let mut other = Event {
            payload: Some(Payload::Click(ClickEvent {
                path: "/home".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(!t.get("testco").resolve_touchpoint(&mut other));
        assert!(!t.get("unknown").resolve_touchpoint(&mut click));
    }
}
