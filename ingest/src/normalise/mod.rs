//! Validation and normalisation of one event: pure, no I/O. This is where
//! every record is normalised, whichever entry point decoded it (the
//! source decoders in [`crate::sources`] only translate native JSON into an
//! `Event`).
//!
//! Input is an `Event` as a source sent it; output is either the event
//! normalised in place (UTC timestamps checked, weak identifiers replaced by
//! their tenant's keyed hashes, PII masked in every free-text field,
//! language detected, touchpoint resolved from the tenant's journey rules,
//! `received_at` stamped) or the list of every field at fault with a stable
//! reason code, so a caller can fix all of them at once.
//!
//! - `checks`: the field rules and limits; [`currency`]: the ISO 4217 table.
//! - [`identity`]: natural event ids, e-mail and phone forms, keyed hashes.
//! - [`text`]: PII masking of free text and language detection.
//! - [`pii`], [`lang`]: the scanners `text` uses.

mod checks;
pub mod currency;
pub mod identity;
pub mod lang;
pub mod pii;
pub mod text;

use std::{sync::Arc, time::Duration};

use xoflow_proto::v1::{Channel, ContactConsent, Event, event::Payload};

pub use identity::{natural_id, normalise_email, normalise_phone};
pub use text::redact_rejected;
/// The stable reason vocabulary, shared with the other stages' dead letters.
pub use xoflow_common::dead_letter::Reason;

use self::{
    checks::{MAX_ATTRIBUTES, MAX_NAME_LEN, check_id, check_name, check_payload, unknown_enum},
    pii::MaskCounts,
};
use crate::tenant::{TenantError, Tenants};

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Path of the field, e.g. `survey.answers[0].score`.
    pub field: String,
    pub reason: Reason,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, reason: Reason, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason,
            description: description.into(),
        }
    }
}

/// Validates and normalises events against fixed rules and the tenants'
/// keys and journey maps.
#[derive(Clone)]
pub struct Normaliser {
    /// Per-tenant keyed hashes (pre-initialised with each secret so a hash
    /// costs no key set-up) and journey rules.
    tenants: Arc<Tenants>,
    max_future_skew_ms: i64,
    max_age_ms: i64,
}

impl std::fmt::Debug for Normaliser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("Normaliser")
            .field("max_future_skew_ms", &self.max_future_skew_ms)
            .field("max_age_ms", &self.max_age_ms)
            .finish_non_exhaustive()
    }
}

impl Normaliser {
    /// One secret for every tenant and no journey rules. Fails only for an
    /// empty key (HMAC itself accepts any length).
    pub fn new(
        hash_secret: &[u8],
        max_future_skew: Duration,
        max_age: Duration,
    ) -> Result<Self, TenantError> {
        Ok(Self::with_tenants(
            Arc::new(Tenants::single(hash_secret)?),
            max_future_skew,
            max_age,
        ))
    }

    /// With compiled tenants.
    pub fn with_tenants(
        tenants: Arc<Tenants>,
        max_future_skew: Duration,
        max_age: Duration,
    ) -> Self {
        Self {
            tenants,
            max_future_skew_ms: max_future_skew.as_millis() as i64,
            max_age_ms: max_age.as_millis() as i64,
        }
    }

    /// The same rules with another bound on age (the backfill lane loads
    /// history).
    pub fn with_max_age(&self, max_age: Duration) -> Self {
        Self {
            max_age_ms: max_age.as_millis() as i64,
            ..self.clone()
        }
    }

    /// Validates `e` and normalises it in place. `now_ms` is the receive
    /// time in Unix milliseconds.
    pub fn normalise(&self, e: &mut Event, now_ms: i64) -> Result<(), Vec<Violation>> {
        self.normalise_record(e, now_ms, &[], &mut MaskCounts::default())
    }

    /// [`Self::normalise`] with the personal names the source marked for
    /// this record, and masked-span counts accumulated for the batch.
    pub fn normalise_record(
        &self,
        e: &mut Event,
        now_ms: i64,
        names: &[String],
        masked: &mut MaskCounts,
    ) -> Result<(), Vec<Violation>> {
        let mut v = Vec::new();
        if e.event_id.is_empty()
            && let Some(id) = natural_id(e)
        {
            e.event_id = id;
        }
        check_id(&mut v, "event_id", &e.event_id, true);
        check_name(&mut v, "tenant", &e.tenant, true);
        check_name(&mut v, "source", &e.source, true);
        match &e.occurred_at {
            None => v.push(Violation::new(
                "occurred_at",
                Reason::Missing,
                "occurred_at is required",
            )),
            Some(ts) => self.check_time(&mut v, "occurred_at", ts, now_ms),
        }
        if let Some(tp) = &e.touchpoint {
            check_name(&mut v, "touchpoint.journey", &tp.journey, false);
            check_name(&mut v, "touchpoint.stage", &tp.stage, false);
            check_name(&mut v, "touchpoint.touchpoint", &tp.touchpoint, false);
            if Channel::try_from(tp.channel).is_err() {
                v.push(unknown_enum("touchpoint.channel", tp.channel));
            }
        }
        if let Some(loc) = &e.location {
            check_name(&mut v, "location.store_id", &loc.store_id, false);
            check_name(&mut v, "location.region", &loc.region, false);
        }
        if e.attributes.len() > MAX_ATTRIBUTES {
            v.push(Violation::new(
                "attributes",
                Reason::TooLong,
                format!(
                    "at most {MAX_ATTRIBUTES} attributes, got {}",
                    e.attributes.len()
                ),
            ));
        }
        for (k, val) in &e.attributes {
            if k.is_empty() || k.len() > MAX_NAME_LEN {
                v.push(Violation::new(
                    format!("attributes[{k:?}]"),
                    Reason::Invalid,
                    format!("attribute keys are 1-{MAX_NAME_LEN} bytes"),
                ));
            }
            if val.len() > MAX_NAME_LEN * 16 {
                v.push(Violation::new(
                    format!("attributes[{k:?}]"),
                    Reason::TooLong,
                    "attribute values are at most 1024 bytes",
                ));
            }
        }
        if ContactConsent::try_from(e.contact_consent).is_err() {
            v.push(unknown_enum("contact_consent", e.contact_consent));
        }
        match &e.payload {
            None => v.push(Violation::new(
                "payload",
                Reason::Missing,
                "exactly one of survey, call, social, order, click is required",
            )),
            Some(p) => check_payload(&mut v, p, now_ms, self),
        }
        if !v.is_empty() {
            return Err(v);
        }
        if let Some(Payload::Social(s)) = &e.payload
            && !s.author_handle.is_empty()
        {
            let c = e.customer.get_or_insert_with(Default::default);
            if c.social_handle.is_empty() && c.social_handle_hash.is_empty() {
                c.social_handle = s.author_handle.clone();
            }
        }
        let tenant = self.tenants.get(&e.tenant);
        self.hash_identity(tenant, e, &mut v);
        if !v.is_empty() {
            return Err(v);
        }
        text::mask_free_text(e, names, masked);
        tenant.resolve_touchpoint(e);
        // One notion of consent downstream: the field. The attribute that
        // carried it before is read into it (an explicit field wins) and
        // removed.
        if let Some(v) = e.attributes.remove(xoflow_proto::DO_NOT_CONTACT_ATTRIBUTE)
            && e.contact_consent == ContactConsent::Unspecified as i32
        {
            e.contact_consent = if xoflow_proto::attribute_says_yes(&v) {
                ContactConsent::Withdrawn as i32
            } else {
                ContactConsent::Granted as i32
            };
        }
        e.utc_offset_seconds = e.occurred_at.as_ref().map_or(0, |t| {
            tenant.utc_offset_seconds(xoflow_proto::to_unix_millis(t))
        });
        e.received_at = Some(xoflow_proto::from_unix_millis(now_ms));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xoflow_proto::v1::{
        CustomerIdentity, MetricKind, Order, OrderStatus, SurveyAnswer, SurveyResponse,
    };

    const NOW: i64 = 1_763_000_000_000;

    fn normaliser() -> Normaliser {
        Normaliser::new(
            b"0123456789abcdef",
            Duration::from_secs(300),
            Duration::from_secs(400 * 86_400),
        )
        .expect("non-empty key")
    }

    fn order() -> Event {
        Event {
            event_id: "e-1".into(),
            tenant: "acme".into(),
            source: "pos".into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(NOW - 1000)),
            payload: Some(Payload::Order(Order {
                order_id: "o-1".into(),
                status: OrderStatus::Paid as i32,
                amount_minor: 56_000,
                currency: "CNY".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_event_is_stamped_and_its_identifiers_hashed() {
        let mut e = order();
        e.customer = Some(CustomerIdentity {
            email: "  Li.Lei@Example.COM ".into(),
            phone: "138 0013 8000".into(),
            ..Default::default()
        });
        normaliser().normalise(&mut e, NOW).expect("valid");
        let c = e.customer.as_ref().expect("customer");
        assert!(c.email.is_empty() && c.phone.is_empty());
        assert_eq!(c.email_hash.len(), 64);
        assert_eq!(
            c.email_hash,
            normaliser().hash("acme", "email", "li.lei@example.com")
        );
        assert_eq!(
            c.phone_hash,
            normaliser().hash("acme", "phone", "+8613800138000")
        );
        assert_eq!(e.received_at, Some(xoflow_proto::from_unix_millis(NOW)));
    }

    /// A click's path is masked like its URL's: a path given apart from
    /// the URL (Segment's `context.page.path`) reached Kafka raw while the
    /// URL beside it was masked.
    #[test]
    fn a_click_path_is_masked_like_its_url() {
        let mut e = order();
        e.payload = Some(Payload::Click(xoflow_proto::v1::ClickEvent {
            action: xoflow_proto::v1::ClickAction::View as i32,
            url: "https://shop.example.cn/u/wang.xm@example.cn?ref=mail".into(),
            path: "/u/wang.xm@example.cn".into(),
            session_id: "s-1".into(),
            ..Default::default()
        }));
        normaliser().normalise(&mut e, NOW).expect("valid");
        let Some(Payload::Click(c)) = &e.payload else {
            panic!("a click")
        };
        assert!(!c.url.contains("wang.xm"), "{}", c.url);
        assert_eq!(c.path, "/u/[EMAIL]");
    }

    #[test]
    fn every_fault_is_reported_with_its_field() {
        let mut e = order();
        e.tenant.clear();
        e.occurred_at = Some(xoflow_proto::from_unix_millis(NOW + 3_600_000));
        e.payload = Some(Payload::Survey(SurveyResponse {
            survey_id: "s".into(),
            answers: vec![SurveyAnswer {
                kind: MetricKind::Nps as i32,
                score: Some(11.0),
                scale_min: 0,
                scale_max: 10,
                ..Default::default()
            }],
            ..Default::default()
        }));
        let v = normaliser().normalise(&mut e, NOW).expect_err("invalid");
        let fields: Vec<_> = v.iter().map(|v| (v.field.as_str(), v.reason)).collect();
        assert_eq!(
            fields,
            vec![
                ("tenant", Reason::Missing),
                ("occurred_at", Reason::OutOfRange),
                ("survey.answers[0].score", Reason::OutOfRange),
            ]
        );
    }

    #[test]
    fn a_currency_outside_iso_4217_is_refused_with_its_field() {
        let mut e = order();
        if let Some(Payload::Order(o)) = &mut e.payload {
            o.currency = "XXQ".into();
        }
        let v = normaliser().normalise(&mut e, NOW).expect_err("XXQ");
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].field.as_str(), v[0].reason),
            ("order.currency", Reason::Invalid)
        );
        assert!(v[0].description.contains("XXQ"), "{}", v[0].description);
        let mut e = order();
        if let Some(Payload::Order(o)) = &mut e.payload {
            o.currency = "USD".into();
        }
        normaliser().normalise(&mut e, NOW).expect("USD");
    }

    #[test]
    fn the_tenant_time_zone_offset_is_stamped() {
        let mut cfg: crate::config::IngestConfig = xoflow_common::config::from_toml::<Wrap>("")
            .expect("defaults")
            .ingest;
        cfg.tenants.insert(
            "acme".into(),
            crate::config::TenantConfig {
                time_zone: Some("Asia/Shanghai".into()),
                ..Default::default()
            },
        );
        cfg.tenants.insert(
            "nyc".into(),
            crate::config::TenantConfig {
                time_zone: Some("America/New_York".into()),
                ..Default::default()
            },
        );
        cfg.validate().expect("valid zones");
        let n = Normaliser::with_tenants(
            Arc::new(Tenants::from_config(&cfg).expect("tenants")),
            Duration::from_secs(300),
            Duration::from_secs(400 * 86_400),
        );
        let mut e = order();
        n.normalise(&mut e, NOW).expect("valid");
        assert_eq!(e.utc_offset_seconds, 8 * 3600);
        // New York: -5 h in winter (NOW is in November), -4 h in summer.
        let mut e = order();
        e.tenant = "nyc".into();
        n.normalise(&mut e, NOW).expect("valid");
        assert_eq!(e.utc_offset_seconds, -5 * 3600);
        let mut e = order();
        e.tenant = "nyc".into();
        e.occurred_at = Some(xoflow_proto::from_unix_millis(NOW - 150 * 86_400_000));
        n.normalise(&mut e, NOW).expect("valid");
        assert_eq!(e.utc_offset_seconds, -4 * 3600);
        // A tenant without a zone is UTC, whatever the client sent.
        let mut e = order();
        e.tenant = "other".into();
        e.utc_offset_seconds = 3600;
        n.normalise(&mut e, NOW).expect("valid");
        assert_eq!(e.utc_offset_seconds, 0);

        cfg.tenants.get_mut("acme").expect("acme").time_zone = Some("Mars/Olympus".into());
        let err = cfg.validate().expect_err("unknown zone").0;
        assert!(err.contains("ingest.tenants.acme.time_zone"), "{err}");
    }

    #[test]
    fn the_do_not_contact_attribute_becomes_the_consent_field() {
        for (value, field, want) in [
            ("true", 0, ContactConsent::Withdrawn),
            ("no", 0, ContactConsent::Granted),
            // An explicit field wins over the attribute.
            (
                "true",
                ContactConsent::Granted as i32,
                ContactConsent::Granted,
            ),
        ] {
            let mut e = order();
            e.contact_consent = field;
            e.attributes.insert("do_not_contact".into(), value.into());
            normaliser().normalise(&mut e, NOW).expect("valid");
            assert_eq!(e.contact_consent, want as i32, "{value} {field}");
            assert!(!e.attributes.contains_key("do_not_contact"));
        }
        let mut e = order();
        e.contact_consent = 7;
        let v = normaliser().normalise(&mut e, NOW).expect_err("unknown");
        assert_eq!(
            (v[0].field.as_str(), v[0].reason),
            ("contact_consent", Reason::UnknownEnum)
        );
    }

    #[derive(serde::Deserialize)]
    struct Wrap {
        ingest: crate::config::IngestConfig,
    }

    #[test]
    fn natural_ids_are_derived_when_the_client_sends_none() {
        let mut e = order();
        e.event_id.clear();
        normaliser().normalise(&mut e, NOW).expect("valid");
        assert_eq!(e.event_id, "order:o-1:2");
    }

    #[test]
    fn phones_normalise_to_e164() {
        assert_eq!(
            normalise_phone("+44 20 7946 0958").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalise_phone("0086-138-0013-8000").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(
            normalise_phone("13800138000").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(normalise_phone("12345"), None);
        assert_eq!(normalise_phone("call me"), None);
    }
}
