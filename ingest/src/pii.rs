//! Masking of personal data in free text, before anything leaves ingest.
//!
//! Transcripts, posts and comments carry e-mail addresses, phone numbers,
//! bank-card numbers and PRC resident ID numbers, in Chinese and English
//! text alike. Each is replaced by a typed placeholder (`[email]`,
//! `[phone]`, `[card]`, `[id]`) so the text keeps its meaning for sentiment
//! and topics while the value is gone. Card numbers need a valid Luhn check
//! digit and ID numbers a valid GB 11643 check character, so order numbers
//! and amounts are left alone. Text without a match is not copied.

use std::{borrow::Cow, sync::LazyLock};

use regex::Regex;

static EMAIL: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}").ok()
});

/// Runs of digits, optionally with a leading `+` and single spaces or
/// dashes between groups, ending in a digit or an ID check `X`.
static NUMBER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\+?[0-9](?:[ \-]?[0-9]){6,21}(?:[ \-]?[0-9Xx])?").ok());

/// What kind of personal number a digit run is, if any.
fn classify(run: &str) -> Option<&'static str> {
    let international = run.starts_with('+');
    let chars: Vec<char> = run.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let digits = chars.iter().filter(|c| c.is_ascii_digit()).count();
    if chars.len() == 18 && digits >= 17 && resident_id_valid(&chars) {
        return Some("[id]");
    }
    if digits == chars.len() {
        if (13..=19).contains(&digits) && luhn_valid(&chars) && !international {
            return Some("[card]");
        }
        if international && (8..=15).contains(&digits) {
            return Some("[phone]");
        }
        // Mainland mobile, bare or with the 86 country code.
        let d: String = chars.iter().collect();
        let local = d.strip_prefix("86").filter(|r| r.len() == 11).unwrap_or(&d);
        if local.len() == 11 && local.starts_with('1') && matches!(local.as_bytes()[1], b'3'..=b'9')
        {
            return Some("[phone]");
        }
    }
    None
}

fn luhn_valid(digits: &[char]) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.iter().rev().enumerate() {
        let Some(d) = c.to_digit(10) else {
            return false;
        };
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            d
        };
    }
    sum.is_multiple_of(10)
}

fn resident_id_valid(chars: &[char]) -> bool {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];
    let mut sum = 0;
    for (c, w) in chars.iter().zip(W) {
        let Some(d) = c.to_digit(10) else {
            return false;
        };
        sum += d * w;
    }
    chars[17].to_ascii_uppercase() == CHECK[(sum % 11) as usize]
}

/// The text with personal data replaced; borrowed when there was none.
pub fn mask(text: &str) -> Cow<'_, str> {
    // Cheap pre-check: no '@' and no digit means nothing to mask.
    if !text.bytes().any(|b| b == b'@' || b.is_ascii_digit()) {
        return Cow::Borrowed(text);
    }
    let mut out = Cow::Borrowed(text);
    if text.contains('@')
        && let Some(re) = EMAIL.as_ref()
        && re.is_match(&out)
    {
        out = Cow::Owned(re.replace_all(&out, "[email]").into_owned());
    }
    if let Some(re) = NUMBER.as_ref() {
        let replaced = re.replace_all(&out, |c: &regex::Captures<'_>| {
            let run = &c[0];
            classify(run)
                .map(str::to_string)
                .unwrap_or_else(|| run.to_string())
        });
        if let Cow::Owned(s) = replaced
            && s != *out
        {
            out = Cow::Owned(s);
        }
    }
    out
}

/// Masks `s` in place; allocates only when something is masked.
pub fn mask_in_place(s: &mut String) -> bool {
    match mask(s) {
        Cow::Borrowed(_) => false,
        Cow::Owned(masked) => {
            *s = masked;
            true
        }
    }
}

/// Masks every free-text field of an event in place.
pub fn mask_event(e: &mut xoflow_proto::v1::Event) {
    use xoflow_proto::v1::event::Payload;
    match e.payload.as_mut() {
        Some(Payload::Survey(s)) => {
            mask_in_place(&mut s.comment);
            for a in &mut s.answers {
                mask_in_place(&mut a.text);
            }
        }
        Some(Payload::Call(c)) => {
            for seg in &mut c.segments {
                mask_in_place(&mut seg.text);
            }
        }
        Some(Payload::Social(p)) => {
            mask_in_place(&mut p.text);
            // The handle is a person's name on the platform: it is already
            // hashed into the identity; keep only a hint for context.
            if p.author_handle.chars().count() > 2 {
                let hint: String = p.author_handle.chars().take(2).collect();
                p.author_handle = format!("{hint}***");
            }
        }
        Some(Payload::Click(c)) => {
            mask_in_place(&mut c.url);
            mask_in_place(&mut c.referrer);
        }
        Some(Payload::Order(o)) => {
            for item in &mut o.items {
                mask_in_place(&mut item.name);
            }
        }
        None => {}
    }
    for v in e.attributes.values_mut() {
        mask_in_place(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_is_masked_in_chinese_and_english() {
        let cases = [
            ("我的电话是13812345678，请回电", "我的电话是[phone]，请回电"),
            (
                "Call me back on +44 20 7946 0958 please",
                "Call me back on [phone] please",
            ),
            (
                "请发邮件到 li.lei@mail.example.com 谢谢",
                "请发邮件到 [email] 谢谢",
            ),
            (
                "Email me at Jane.Doe+cx@example.co.uk.",
                "Email me at [email].",
            ),
            ("卡号6222021234567890128有问题", "卡号[card]有问题"),
            (
                "My card number is 4111 1111 1111 1111",
                "My card number is [card]",
            ),
            ("身份证号11010519491231002X", "身份证号[id]"),
            (
                "ID number 440308199001011234 thanks",
                "ID number 440308199001011234 thanks",
            ),
        ];
        for (input, expected) in cases {
            // The last case has a wrong check character: not an ID number,
            // and 18 digits failing Luhn: not a card either.
            assert_eq!(mask(input), expected, "{input}");
        }
    }

    #[test]
    fn order_numbers_amounts_and_plain_text_stay() {
        for s in [
            "Order 20231101 cost 560 yuan",
            "订单号 1234567890 已发货",
            "Waited 45 minutes for a table",
            "no digits at all",
        ] {
            assert!(matches!(mask(s), Cow::Borrowed(_)), "{s} -> {}", mask(s));
        }
    }
}
