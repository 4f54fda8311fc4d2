//! The alert stage's settings (`[alert]`), and their pure validation.
//!
//! Per tenant and department, the webhooks an alert of that department is
//! delivered to (`[alert.tenants.<tenant>.departments.<department>]`, one
//! `[[...webhooks]]` table each). Everything else bounds how the stage
//! retries, how much it holds and how it batches. Every default is a const
//! here and written out, with its reason, in `alert/alert.toml`; a unit test
//! keeps the two equal.

use std::{collections::BTreeMap, fmt, net::SocketAddr, time::Duration};

use serde::Deserialize;

/// Consumer group of every alert stage instance.
pub const DEFAULT_GROUP_ID: &str = "xoflow-alert";
/// Where the case API listens.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8090";
/// Longest one webhook call may take, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait after a failed delivery attempt.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long an alert is retried at one webhook before it is dead-lettered.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(30 * 60);
/// Alerts awaiting delivery per department before consumption pauses.
pub const DEFAULT_MAX_PENDING_PER_DEPARTMENT: usize = 10_000;
/// Webhook calls at once per department.
pub const DEFAULT_MAX_IN_FLIGHT_PER_DEPARTMENT: usize = 8;
/// Most alerts read per batch.
pub const DEFAULT_BATCH_MAX_RECORDS: usize = 500;
/// How long a batch waits to fill.
pub const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_millis(100);
/// Work waiting and nothing committed for this long: readiness fails.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// Largest `batch_max_records` accepted: a batch's alert ids are looked up
/// in one query, spliced into its text.
const MAX_BATCH_RECORDS: usize = 10_000;

/// Everything the alert stage needs to know (`[alert]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Consumer group shared by every alert stage instance: the alerts
    /// topic's partitions are shared among them, and each alert is handled
    /// by the one holding its partition.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Where the case lifecycle API (`/v1/alerts/...`) listens; port 0
    /// picks a free one.
    #[serde(default = "default_api_addr")]
    pub api_addr: SocketAddr,
    /// Longest one webhook call may take (connecting, sending, the answer):
    /// a receiver that never answers costs its department this much per
    /// attempt, and nothing to other departments.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First wait after a failed attempt; doubles with every failure of the
    /// same alert at the same webhook, with jitter (each wait between half
    /// and all of it), up to `retry_max_backoff`.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Longest wait between two attempts: bounds how late an alert arrives
    /// after its receiver comes back.
    #[serde(default = "default_retry_max_backoff", with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// After failing at a webhook for this long (from its first attempt),
    /// the alert's delivery there is given up: it goes to the dead-letter
    /// topic (`UNDELIVERABLE`) and its offset can be committed.
    #[serde(default = "default_give_up_after", with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Alerts read and not yet delivered, dead-lettered or found without a
    /// webhook, per department: once one department holds this many, the
    /// stage pauses reading the alerts topic (memory stays bounded; the
    /// other departments' alerts already read go on, their new ones wait in
    /// Kafka too: the topic is keyed by customer). At most one batch more
    /// is taken in.
    #[serde(default = "default_max_pending")]
    pub max_pending_per_department: usize,
    /// Webhook calls at once per department: alerts waiting for a slow
    /// receiver do not hold more than this many connections.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_per_department: usize,
    /// Most alerts read per batch: one ClickHouse lookup and one insert
    /// per batch.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// How long a batch waits to fill after its first alert; also how
    /// often attempts are written to the delivery log and offsets
    /// committed. Adds to every alert's latency.
    #[serde(default = "default_batch_max_wait", with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Alerts waiting in the topic with nothing committed for this long:
    /// readiness says `no_progress` (`no_partitions`, and liveness too,
    /// when this instance holds none). An alert a receiver keeps refusing
    /// holds its partition's committed offset for at least `give_up_after`
    /// (longer when it first waited for a delivery slot), so this must be
    /// longer.
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Per tenant, its departments' webhooks. A department not listed has
    /// no webhook: its alerts are recorded and logged as `no_webhook`.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantAlerts>,
}

/// One tenant's departments (`[alert.tenants.<tenant>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantAlerts {
    /// Department name (as the tenant's journey config and enrich's
    /// `owner_department` spell it) → where its alerts go.
    #[serde(default)]
    pub departments: BTreeMap<String, DepartmentAlerts>,
}

/// One department's receivers
/// (`[alert.tenants.<tenant>.departments.<department>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepartmentAlerts {
    /// Every alert of the department is delivered to each of these, each
    /// on its own retry schedule.
    pub webhooks: Vec<WebhookConfig>,
}

/// One receiver of a department's alerts.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The http(s) URL alerts are POSTed to. Chat robots' URLs carry their
    /// token: it is never logged nor stored (the delivery log keeps the
    /// host).
    pub url: String,
    /// What the receiver expects: the documented `generic` JSON, or a chat
    /// robot's message format (`feishu`, `dingtalk`, `wecom`, `slack`).
    pub format: Format,
    /// The signing secret: the `X-Xoflow-Signature` HMAC key for every
    /// format, and the robot's own signing secret for `feishu` (the `sign`
    /// in the body) and `dingtalk` (the `sign` query parameter). Required
    /// except for `wecom` and `slack`, whose robots sign nothing.
    #[serde(default)]
    pub secret: Option<String>,
}

impl fmt::Debug for WebhookConfig {
    /// Neither the URL (its path and query hold tokens) nor the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("host", &crate::webhook::host_of(&self.url))
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// xoflow's own JSON (docs/alerts.md), for any HTTP service.
    Generic,
    /// A Feishu / Lark custom bot: an interactive card.
    Feishu,
    /// A DingTalk custom robot: markdown.
    Dingtalk,
    /// A WeCom (企业微信) group robot: markdown.
    Wecom,
    /// A Slack incoming webhook: text and blocks.
    Slack,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Generic,
        Format::Feishu,
        Format::Dingtalk,
        Format::Wecom,
        Format::Slack,
    ];

    /// The stable name: the setting, the `format` column and metric tag.
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Generic => "generic",
            Format::Feishu => "feishu",
            Format::Dingtalk => "dingtalk",
            Format::Wecom => "wecom",
            Format::Slack => "slack",
        }
    }

    /// Whether the format needs a secret to be configured.
    pub const fn needs_secret(self) -> bool {
        !matches!(self, Format::Wecom | Format::Slack)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One setting the stage cannot work with, by its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    /// E.g. `alert.tenants.acme.departments.logistics.webhooks[0].url`.
    pub path: String,
    pub problem: String,
}

/// Every setting that is wrong, in the order of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            group_id: default_group_id(),
            api_addr: default_api_addr(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            retry_max_backoff: DEFAULT_RETRY_MAX_BACKOFF,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
            max_pending_per_department: DEFAULT_MAX_PENDING_PER_DEPARTMENT,
            max_in_flight_per_department: DEFAULT_MAX_IN_FLIGHT_PER_DEPARTMENT,
            batch_max_records: DEFAULT_BATCH_MAX_RECORDS,
            batch_max_wait: DEFAULT_BATCH_MAX_WAIT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            tenants: BTreeMap::new(),
        }
    }
}

fn default_group_id() -> String {
    DEFAULT_GROUP_ID.to_owned()
}
fn default_api_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}
const fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
const fn default_retry_backoff() -> Duration {
    DEFAULT_RETRY_BACKOFF
}
const fn default_retry_max_backoff() -> Duration {
    DEFAULT_RETRY_MAX_BACKOFF
}
const fn default_give_up_after() -> Duration {
    DEFAULT_GIVE_UP_AFTER
}
const fn default_max_pending() -> usize {
    DEFAULT_MAX_PENDING_PER_DEPARTMENT
}
const fn default_max_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT_PER_DEPARTMENT
}
const fn default_batch_max_records() -> usize {
    DEFAULT_BATCH_MAX_RECORDS
}
const fn default_batch_max_wait() -> Duration {
    DEFAULT_BATCH_MAX_WAIT
}
const fn default_stall_timeout() -> Duration {
    DEFAULT_STALL_TIMEOUT
}

impl AlertConfig {
    /// Every (tenant, department) with webhooks, in name order: for the
    /// cross-check against the tenants' journey config at start-up.
    pub fn departments(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tenants
            .iter()
            .flat_map(|(t, ta)| ta.departments.keys().map(move |d| (t.as_str(), d.as_str())))
    }

    /// The webhooks of a department; `None` when it has none.
    pub fn webhooks(&self, tenant: &str, department: &str) -> Option<&[WebhookConfig]> {
        self.tenants
            .get(tenant)?
            .departments
            .get(department)
            .map(|d| d.webhooks.as_slice())
    }

    /// Checks every setting; pure. All problems are reported at once, each
    /// with its path.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut bad = |path: String, problem: &str| {
            errors.push(ConfigError {
                path,
                problem: problem.to_owned(),
            })
        };
        if self.group_id.trim().is_empty() {
            bad("alert.group_id".into(), "must not be empty");
        }
        if self.request_timeout.is_zero() {
            bad("alert.request_timeout".into(), "must be above 0");
        }
        if self.retry_backoff.is_zero() {
            bad("alert.retry_backoff".into(), "must be above 0");
        }
        if self.retry_max_backoff < self.retry_backoff {
            bad(
                "alert.retry_max_backoff".into(),
                "must not be below alert.retry_backoff",
            );
        }
        if self.give_up_after.is_zero() {
            bad("alert.give_up_after".into(), "must be above 0");
        }
        if self.stall_timeout <= self.give_up_after {
            bad(
                "alert.stall_timeout".into(),
                "must be longer than alert.give_up_after (an alert being retried holds its partition's offset that long)",
            );
        }
        if self.max_pending_per_department == 0 {
            bad("alert.max_pending_per_department".into(), "must be above 0");
        }
        if self.max_in_flight_per_department == 0 {
            bad(
                "alert.max_in_flight_per_department".into(),
                "must be above 0",
            );
        }
        if self.batch_max_records == 0 || self.batch_max_records > MAX_BATCH_RECORDS {
            bad(
                "alert.batch_max_records".into(),
                "must be between 1 and 10000",
            );
        }
        if self.batch_max_wait.is_zero() {
            bad("alert.batch_max_wait".into(), "must be above 0");
        }
        for (tenant, t) in &self.tenants {
            if tenant.trim().is_empty() {
                bad("alert.tenants".into(), "a tenant name is empty");
            }
            for (department, d) in &t.departments {
                let at = format!("alert.tenants.{tenant}.departments.{department}");
                if department.trim().is_empty() {
                    bad(at.clone(), "the department name is empty");
                }
                if d.webhooks.is_empty() {
                    bad(
                        format!("{at}.webhooks"),
                        "at least one webhook (leave the department out to record its alerts without delivering them)",
                    );
                }
                for (i, w) in d.webhooks.iter().enumerate() {
                    let at = format!("{at}.webhooks[{i}]");
                    if !crate::webhook::is_http_url(&w.url) {
                        bad(format!("{at}.url"), "not an http(s) URL");
                    }
                    match &w.secret {
                        Some(s) if s.is_empty() => {
                            bad(format!("{at}.secret"), "must not be empty when set")
                        }
                        None if w.format.needs_secret() => bad(
                            format!("{at}.secret"),
                            &format!("required for format {}", w.format),
                        ),
                        _ => {}
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[alert]` section of the whole file (the embedded defaults,
    /// overlaid with the test's TOML; the other sections are not read
    /// here).
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        alert: AlertConfig,
    }

    fn parse(toml: &str) -> Result<AlertConfig, String> {
        xoflow_common::config::from_toml::<File>(toml)
            .map(|f| f.alert)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_block_holds_the_defaults_and_validates() {
        let text = include_str!("../alert.toml");
        let cfg = parse(text).expect("alert.toml parses");
        let defaults = AlertConfig {
            tenants: cfg.tenants.clone(),
            ..AlertConfig::default()
        };
        assert_eq!(cfg, defaults, "alert.toml and the consts agree");
        assert_eq!(cfg.validate(), Ok(()));
        // Every commented example in the block is valid too.
        let examples: String = text
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| {
                l.starts_with("[alert.tenants")
                    || l.starts_with("[[alert.tenants")
                    || l.starts_with("url =")
                    || l.starts_with("format =")
                    || l.starts_with("secret =")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let with_examples = parse(&format!("[alert]\n{examples}")).expect("examples parse");
        assert_eq!(with_examples.validate(), Ok(()));
        let deps: Vec<(&str, &str)> = with_examples.departments().collect();
        assert!(!deps.is_empty(), "{examples}");
    }

    #[test]
    fn a_missing_section_is_all_defaults() {
        let cfg = parse("[alert]\n").expect("empty");
        assert_eq!(cfg, AlertConfig::default());
        assert_eq!(cfg.api_addr.to_string(), DEFAULT_API_ADDR);
        assert_eq!(cfg.departments().count(), 0);
    }

    #[test]
    fn unknown_settings_are_refused_by_name() {
        let e = parse("[alert]\ngive_up_afer = \"1m\"\n").expect_err("typo");
        assert!(e.contains("give_up_afer"), "{e}");
        let e = parse(
            "[[alert.tenants.acme.departments.x.webhooks]]\nurl = \"https://h/\"\nformat = \"teams\"\n",
        )
        .expect_err("format");
        assert!(e.contains("teams"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let base = || AlertConfig {
            give_up_after: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(120),
            ..AlertConfig::default()
        };
        let hook = |url: &str, format: Format, secret: Option<&str>| WebhookConfig {
            url: url.into(),
            format,
            secret: secret.map(Into::into),
        };
        let with = |hooks: Vec<WebhookConfig>| {
            let mut c = base();
            c.tenants
                .entry("acme".into())
                .or_default()
                .departments
                .insert("logistics".into(), DepartmentAlerts { webhooks: hooks });
            c
        };
        let at = "alert.tenants.acme.departments.logistics";
        let table: Vec<(AlertConfig, Vec<String>)> = vec![
            (base(), vec![]),
            (
                with(vec![hook("https://open.feishu.cn/x", Format::Feishu, Some("s"))]),
                vec![],
            ),
            (
                with(vec![hook("ftp://example.com/", Format::Wecom, None)]),
                vec![format!("{at}.webhooks[0].url: not an http(s) URL")],
            ),
            (
                with(vec![
                    hook("https://h/", Format::Slack, None),
                    hook("example.com/hook", Format::Generic, Some("k")),
                ]),
                vec![format!("{at}.webhooks[1].url: not an http(s) URL")],
            ),
            (
                with(vec![hook("http://10.0.0.1:8080/x", Format::Dingtalk, None)]),
                vec![format!(
                    "{at}.webhooks[0].secret: required for format dingtalk"
                )],
            ),
            (
                with(vec![hook("https://h/", Format::Wecom, Some(""))]),
                vec![format!("{at}.webhooks[0].secret: must not be empty when set")],
            ),
            (
                with(vec![]),
                vec![format!(
                    "{at}.webhooks: at least one webhook (leave the department out to record its alerts without delivering them)"
                )],
            ),
            (
                AlertConfig {
                    retry_backoff: Duration::from_secs(5),
                    retry_max_backoff: Duration::from_secs(1),
                    stall_timeout: Duration::from_secs(60),
                    batch_max_records: 0,
                    ..base()
                },
                vec![
                    "alert.retry_max_backoff: must not be below alert.retry_backoff".into(),
                    "alert.stall_timeout: must be longer than alert.give_up_after (an alert being retried holds its partition's offset that long)".into(),
                    "alert.batch_max_records: must be between 1 and 10000".into(),
                ],
            ),
            (
                AlertConfig {
                    group_id: " ".into(),
                    request_timeout: Duration::ZERO,
                    max_pending_per_department: 0,
                    max_in_flight_per_department: 0,
                    ..base()
                },
                vec![
                    "alert.group_id: must not be empty".into(),
                    "alert.request_timeout: must be above 0".into(),
                    "alert.max_pending_per_department: must be above 0".into(),
                    "alert.max_in_flight_per_department: must be above 0".into(),
                ],
            ),
        ];
        for (cfg, want) in table {
            let got: Vec<String> = match cfg.validate() {
                Ok(()) => vec![],
                Err(ConfigErrors(e)) => e.iter().map(ToString::to_string).collect(),
            };
            assert_eq!(got, want);
        }
    }

    #[test]
    fn departments_are_listed_per_tenant_and_secrets_never_printed() {
        let cfg = parse(
            r#"
[[alert.tenants.acme.departments.logistics.webhooks]]
url = "https://oapi.dingtalk.com/robot/send?access_token=TOKEN123"
format = "dingtalk"
secret = "SECabc"
[[alert.tenants.acme.departments.care.webhooks]]
url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY456"
format = "wecom"
[[alert.tenants.hotpot.departments.kitchen.webhooks]]
url = "https://hooks.slack.com/services/T/B/X"
format = "slack"
"#,
        )
        .expect("parse");
        let deps: Vec<(&str, &str)> = cfg.departments().collect();
        assert_eq!(
            deps,
            [
                ("acme", "care"),
                ("acme", "logistics"),
                ("hotpot", "kitchen")
            ]
        );
        assert_eq!(cfg.validate(), Ok(()));
        let shown = format!("{cfg:?}");
        for secret in ["TOKEN123", "SECabc", "KEY456", "/services/"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("oapi.dingtalk.com"), "{shown}");
        assert!(cfg.webhooks("acme", "care").is_some());
        assert!(cfg.webhooks("acme", "finance").is_none());
    }
}
