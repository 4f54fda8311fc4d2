//! Free text: PII masked in every free-text field (before anything is
//! encoded), and the language filled in when the source gave none.

use xoflow_proto::v1::{Event, Speaker, event::Payload};

use super::{
    lang,
    pii::{self, MaskCounts},
};

/// Makes a refused event fit for the dead-letter topic: free text masked and
/// raw identifiers that look personal replaced by placeholders (a value that
/// is not an address or number stays, so the reader sees why it failed).
pub fn redact_rejected(e: &mut Event, names: &[String], masked: &mut MaskCounts) {
    mask_free_text(e, names, masked);
    if let Some(c) = e.customer.as_mut() {
        for f in [
            &mut c.email,
            &mut c.phone,
            &mut c.social_handle,
            &mut c.device_id,
        ] {
            pii::mask_in_place(f, names, masked);
        }
        if !c.social_handle.is_empty() {
            c.social_handle = "[HANDLE]".into();
        }
    }
}

/// Masks PII in every free-text field and fills in the language of the
/// text when the source did not give it.
pub(super) fn mask_free_text(e: &mut Event, names: &[String], masked: &mut MaskCounts) {
    for v in e.attributes.values_mut() {
        pii::mask_in_place(v, names, masked);
    }
    match e.payload.as_mut() {
        Some(Payload::Survey(s)) => {
            pii::mask_in_place(&mut s.comment, names, masked);
            for a in &mut s.answers {
                pii::mask_in_place(&mut a.text, names, masked);
            }
            if s.language.is_empty() {
                let text = if s.comment.is_empty() {
                    s.answers
                        .iter()
                        .map(|a| a.text.as_str())
                        .find(|t| !t.is_empty())
                } else {
                    Some(s.comment.as_str())
                };
                if let Some(lang) = text.and_then(lang::detect) {
                    s.language = lang.into();
                }
            }
        }
        Some(Payload::Call(c)) => {
            for seg in &mut c.segments {
                pii::mask_in_place(&mut seg.text, names, masked);
            }
            if c.language.is_empty()
                && let Some(lang) = c
                    .segments
                    .iter()
                    .find(|s| s.speaker == Speaker::Customer as i32 && !s.text.is_empty())
                    .or_else(|| c.segments.first())
                    .and_then(|s| lang::detect(&s.text))
            {
                c.language = lang.into();
            }
        }
        Some(Payload::Social(s)) => {
            pii::mask_in_place(&mut s.text, names, masked);
            if let Some(u) = pii::mask_url(&s.url, masked) {
                s.url = u;
            }
            // The handle is hashed into the identity; the post keeps a hint
            // only, enough to read a thread, not to find the person.
            if !s.author_handle.is_empty() {
                let hint: String = s
                    .author_handle
                    .trim_start_matches('@')
                    .chars()
                    .take(1)
                    .collect();
                s.author_handle = format!("@{hint}***");
            }
            if s.language.is_empty()
                && let Some(lang) = lang::detect(&s.text)
            {
                s.language = lang.into();
            }
        }
        Some(Payload::Click(c)) => {
            for u in [&mut c.url, &mut c.referrer] {
                if let Some(m) = pii::mask_url(u, masked) {
                    *u = m;
                }
            }
            // The path is the URL's, given apart (or taken from it): masked
            // as the URL's path is.
            pii::mask_in_place(&mut c.path, &[], masked);
        }
        Some(Payload::Order(o)) => {
            for item in &mut o.items {
                pii::mask_in_place(&mut item.name, names, masked);
            }
        }
        None => {}
    }
}
