//! Identity: the event id derived from a source's natural id, the
//! canonical forms of e-mail addresses and phone numbers, and the keyed
//! hashes that replace weak identifiers so the same address in two tenants
//! never joins.

use hmac::Mac;
use xoflow_proto::v1::{Event, event::Payload};

use super::{
    Normaliser, Reason, Violation,
    checks::{MAX_ID_LEN, check_id},
};
use crate::tenant::Tenant;

impl Normaliser {
    /// Replaces raw weak identifiers by their keyed hashes. Checks every
    /// identifier before changing any, so a refused event is left as sent.
    pub(super) fn hash_identity(&self, t: &Tenant, e: &mut Event, v: &mut Vec<Violation>) {
        let Some(c) = e.customer.as_mut() else { return };
        check_id(v, "customer.customer_id", &c.customer_id, false);
        let email = (!c.email.is_empty()).then(|| normalise_email(&c.email));
        let phone = (!c.phone.is_empty()).then(|| normalise_phone(&c.phone));
        if let Some(None) = email {
            v.push(Violation::new(
                "customer.email",
                Reason::Invalid,
                "not an e-mail address",
            ));
        }
        if let Some(None) = phone {
            v.push(Violation::new(
                "customer.phone",
                Reason::Invalid,
                "not a phone number in international (+CC...) or Chinese mobile form",
            ));
        }
        if !v.is_empty() {
            return;
        }
        let tenant = e.tenant.as_str();
        let hash = |kind: &str, value: &str| keyed_hash(t, tenant, kind, value);
        if let Some(Some(email)) = email {
            c.email_hash = hash("email", &email);
            c.email.clear();
        }
        if let Some(Some(phone)) = phone {
            c.phone_hash = hash("phone", &phone);
            c.phone.clear();
        }
        if !c.social_handle.is_empty() {
            let h = c
                .social_handle
                .trim()
                .trim_start_matches('@')
                .to_lowercase();
            c.social_handle_hash = hash("handle", &h);
            c.social_handle.clear();
        }
        if !c.device_id.is_empty() {
            c.device_id_hash = hash("device", c.device_id.trim());
            c.device_id.clear();
        }
    }

    /// Hashes a customer's weak identifiers exactly as an event's are
    /// hashed (the same canonical forms, the tenant's key): how
    /// `xoflow identities import` seeds links that resolve events.
    pub fn hash_customer(
        &self,
        tenant: &str,
        customer: xoflow_proto::v1::CustomerIdentity,
    ) -> Result<xoflow_proto::v1::CustomerIdentity, Vec<Violation>> {
        let mut e = Event {
            tenant: tenant.to_owned(),
            customer: Some(customer),
            ..Default::default()
        };
        let mut v = Vec::new();
        self.hash_identity(self.tenants.get(tenant), &mut e, &mut v);
        if v.is_empty() {
            Ok(e.customer.unwrap_or_default())
        } else {
            Err(v)
        }
    }

    /// Hex HMAC-SHA256 under the tenant's key over tenant, identifier kind
    /// and value, so the same address in two tenants never joins.
    pub fn hash(&self, tenant: &str, kind: &str, value: &str) -> String {
        keyed_hash(self.tenants.get(tenant), tenant, kind, value)
    }
}

fn keyed_hash(t: &Tenant, tenant: &str, kind: &str, value: &str) -> String {
    let mut mac = t.mac.clone();
    mac.update(tenant.as_bytes());
    mac.update(&[0]);
    mac.update(kind.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    // `hex::encode` builds its string a char at a time; this is one
    // table look-up per byte and one allocation, on every event's every
    // weak identifier.
    let mut digits = [0u8; 64];
    hex::encode_to_slice(mac.finalize().into_bytes(), &mut digits)
        .expect("64 hex digits for a 32-byte digest");
    std::str::from_utf8(&digits)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// The event id derived from a source's natural record id, when it has one:
/// a replayed webhook then carries the same idempotency key.
pub fn natural_id(e: &Event) -> Option<String> {
    let id = match e.payload.as_ref()? {
        Payload::Order(o) if !o.order_id.is_empty() => {
            format!("order:{}:{}", o.order_id, o.status)
        }
        Payload::Call(c) if !c.call_id.is_empty() => format!("call:{}", c.call_id),
        Payload::Social(s) if !s.post_id.is_empty() => {
            format!("social:{}:{}", s.platform, s.post_id)
        }
        _ => return None,
    };
    (id.len() <= MAX_ID_LEN).then_some(id)
}

/// Trimmed, lower-cased address with one `@` and a dotted domain.
pub fn normalise_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.chars().any(char::is_whitespace)
        && !domain.contains('@');
    ok.then_some(e)
}

/// E.164 form (`+` and 8-15 digits). A bare 11-digit number starting with 1
/// is taken as a mainland China mobile (+86).
pub fn normalise_phone(raw: &str) -> Option<String> {
    let mut digits = String::with_capacity(16);
    let s = raw.trim();
    let (international, rest) = if let Some(r) = s.strip_prefix('+') {
        (true, r)
    } else if let Some(r) = s.strip_prefix("00") {
        (true, r)
    } else {
        (false, s)
    };
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '(' | ')' | '.' => {}
            _ => return None,
        }
    }
    if international {
        (8..=15)
            .contains(&digits.len())
            .then(|| format!("+{digits}"))
    } else if digits.len() == 11 && digits.starts_with('1') {
        Some(format!("+86{digits}"))
    } else {
        None
    }
}
