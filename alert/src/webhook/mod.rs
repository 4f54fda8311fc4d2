//! Webhooks: what one delivery attempt sends, and the HTTP client that
//! sends it.
//!
//! In: an alert and one configured webhook. Out: an HTTP POST —
//! `Content-Type: application/json`, `Idempotency-Key: <alert_id>`,
//! `X-Xoflow-Alert-Id`, `X-Xoflow-Timestamp: <unix seconds>` and, when the
//! webhook has a secret, `X-Xoflow-Signature: v1=<hex HMAC-SHA256(secret,
//! "<timestamp>.<body>")>` — with the body in the webhook's format
//! ([`payload`]) and the robot's own signature where it has one ([`sign`]),
//! then the [`Verdict`] on the answer ([`client`]). The body and the
//! signatures are made again for every attempt (the timestamps must be
//! fresh: receivers reject old ones); the idempotency key never changes.
//!
//! Receivers should verify the signature and refuse timestamps more than 5
//! minutes old, which makes a captured request useless for a replay later;
//! the recipe is in docs/alerts.md.

pub mod client;
pub mod payload;
pub mod sign;

use http::Uri;

pub use client::{Attempt, Verdict, WebhookClient};

use crate::config::{Format, WebhookConfig};

/// A configured webhook, parsed once.
#[derive(Clone)]
pub struct Webhook {
    /// Its index in the department's list: with `host`, how the delivery
    /// log names it.
    pub index: u16,
    pub uri: Uri,
    /// Host and port: what may be logged and stored (the URL's path and
    /// query carry the robot's token).
    pub host: String,
    pub format: Format,
    pub secret: Option<String>,
    /// `alert.tenants.<t>.departments.<d>.webhooks[<i>]`: the dead letter's
    /// field.
    pub path: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("index", &self.index)
            .field("host", &self.host)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// From a validated config entry; `None` if its URL does not parse
    /// (validation refuses that first).
    pub fn new(cfg: &WebhookConfig, index: usize, path: String) -> Option<Self> {
        let uri: Uri = cfg.url.parse().ok()?;
        Some(Webhook {
            index: u16::try_from(index).unwrap_or(u16::MAX),
            host: host_of(&cfg.url),
            uri,
            format: cfg.format,
            secret: cfg.secret.clone(),
            path,
        })
    }
}

/// Whether `url` is an absolute http or https URL with a host.
pub fn is_http_url(url: &str) -> bool {
    url.parse::<Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    })
}

/// The host (and port, when the URL names one) of a URL, without user
/// info, path or query: what logs and the delivery log may hold. Empty
/// when it does not parse.
pub fn host_of(url: &str) -> String {
    let Ok(u) = url.parse::<Uri>() else {
        return String::new();
    };
    match (u.host(), u.port_u16()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_of_a_url_is_kept() {
        let table = [
            (
                "https://oapi.dingtalk.com/robot/send?access_token=abc",
                "oapi.dingtalk.com",
            ),
            ("http://user:pw@127.0.0.1:8080/hook?k=1", "127.0.0.1:8080"),
            ("https://[::1]:9000/x", "[::1]:9000"),
            ("not a url", ""),
        ];
        for (url, host) in table {
            assert_eq!(host_of(url), host, "{url}");
        }
    }

    #[test]
    fn only_absolute_http_urls_pass() {
        for ok in [
            "http://h/x",
            "https://open.feishu.cn/open-apis/bot/v2/hook/1",
        ] {
            assert!(is_http_url(ok), "{ok}");
        }
        for bad in ["ftp://h/", "h/x", "/x", "https://", "", "http:// spaced/"] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }
}
