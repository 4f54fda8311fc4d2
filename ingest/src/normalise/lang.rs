//! Offline language detection of free text by script: pure, no I/O, no
//! model. Han text is Chinese, kana Japanese, Hangul Korean, Cyrillic
//! Russian; Latin text is English when it reads like English (common
//! function words, or plain ASCII), otherwise undetermined. Enough for the
//! zh/en mix the sources send, and cheap enough to run on every record.

/// The BCP-47 primary tag of `text`'s language, or `None` when the text has
/// no letters or is Latin script that is not recognisably English.
pub fn detect(text: &str) -> Option<&'static str> {
    let (mut han, mut kana, mut hangul, mut cyrillic, mut latin) = (0u32, 0u32, 0u32, 0u32, 0u32);
    for c in text.chars() {
        match c as u32 {
            0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF => han += 1,
            0x3040..=0x30FF => kana += 1,
            0xAC00..=0xD7AF | 0x1100..=0x11FF => hangul += 1,
            0x0400..=0x04FF => cyrillic += 1,
            _ if c.is_ascii_alphabetic() => latin += 1,
            0x00C0..=0x024F => latin += 1,
            _ => {}
        }
    }
    // Han characters carry about as much as a Latin word, so they weigh
    // more than single Latin letters.
    let cjk = han * 3;
    let best = [kana * 3, hangul * 3, cyrillic, latin, cjk]
        .into_iter()
        .max()
        .unwrap_or(0);
    if best == 0 {
        return None;
    }
    if kana > 0 && kana * 3 >= best / 4 {
        return Some("ja");
    }
    if best == cjk {
        return Some("zh");
    }
    if best == hangul * 3 {
        return Some("ko");
    }
    if best == cyrillic {
        return Some("ru");
    }
    reads_like_english(text).then_some("en")
}

const ENGLISH_WORDS: [&str; 24] = [
    "the", "and", "is", "was", "to", "of", "it", "for", "my", "not", "with", "you", "i", "a",
    "this", "that", "are", "very", "but", "have", "on", "in", "me", "be",
];

fn reads_like_english(text: &str) -> bool {
    let mut words = 0;
    let mut hits = 0;
    for w in text
        .split(|c: char| !c.is_alphabetic() && c != '\'')
        .filter(|w| !w.is_empty())
    {
        words += 1;
        if ENGLISH_WORDS.iter().any(|e| w.eq_ignore_ascii_case(e)) {
            hits += 1;
        }
    }
    hits > 0 || (words > 0 && text.is_ascii())
}

#[cfg(test)]
mod tests {
    use super::detect;

    #[test]
    fn detects_the_languages_sources_send() {
        for (text, want) in [
            ("配送太慢了，等了四天才到", Some("zh")),
            (
                "The staff were friendly and the food came quickly.",
                Some("en"),
            ),
            ("Great service!", Some("en")),
            ("订单 A123 delivered late 太慢了", Some("zh")),
            ("とても良いサービスでした", Some("ja")),
            ("서비스가 좋았어요", Some("ko")),
            ("Очень долго ждал", Some("ru")),
            ("Très déçu, livré en retard", None),
            ("12345 !!!", None),
        ] {
            assert_eq!(detect(text), want, "{text}");
        }
    }
}
