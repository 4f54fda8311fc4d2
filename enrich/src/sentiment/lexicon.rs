//! The hand-written word lists, kept where they measurably help: as two
//! features of the model (a positive and a negative lexicon hit, negation
//! applied), which carry what the training corpora rarely show — customer
//! service words, emoji and slang. Their weights are learned like any other.

use std::sync::LazyLock;

/// English words with a clear polarity in customer feedback.
const EN_POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "amazing",
    "awesome",
    "love",
    "loves",
    "loved",
    "lovely",
    "friendly",
    "helpful",
    "fast",
    "quick",
    "quickly",
    "perfect",
    "delicious",
    "fresh",
    "easy",
    "smooth",
    "happy",
    "satisfied",
    "recommend",
    "attentive",
    "polite",
    "clean",
    "fair",
    "sturdy",
    "authentic",
    "thanks",
    "thank",
    "nice",
    "best",
    "organised",
    "organized",
    "resolved",
    "efficient",
    "wonderful",
    "pleasant",
    "tasty",
    "yummy",
    "fantastic",
    "superb",
    "reliable",
    "courteous",
    "prompt",
    "convenient",
    "professional",
    "impressed",
    "enjoyed",
    "glad",
];

const EN_NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "horrible",
    "worst",
    "poor",
    "late",
    "slow",
    "rude",
    "unfriendly",
    "ignored",
    "broke",
    "broken",
    "defective",
    "damaged",
    "crushed",
    "disappointing",
    "disappointed",
    "expensive",
    "overcharged",
    "confusing",
    "crashing",
    "crashes",
    "crash",
    "error",
    "failed",
    "fail",
    "cold",
    "salty",
    "forever",
    "ages",
    "complaint",
    "refund",
    "angry",
    "annoyed",
    "dirty",
    "wrong",
    "missing",
    "lost",
    "badly",
    "problem",
    "useless",
    "waste",
    "unacceptable",
    "scam",
    "delay",
    "delayed",
    "disgusting",
    "stale",
    "soggy",
    "unhelpful",
    "filthy",
    "overpriced",
    "ripoff",
    "sucks",
    "hate",
    "never",
];

/// Words that open a negation scope (to the end of the clause).
const EN_NEGATORS: &[&str] = &[
    "not", "no", "never", "cannot", "without", "nor", "none", "nothing", "neither", "hardly",
    "barely", "nobody", "nowhere", "dont", "didnt", "doesnt", "isnt", "wasnt", "arent", "werent",
    "cant", "couldnt", "wont", "wouldnt", "shouldnt", "havent", "hasnt", "hadnt", "aint",
];

/// Words that end a negation scope before the clause ends.
const EN_SCOPE_END: &[&str] = &["but", "however", "although", "though", "yet"];

/// Slang and shorthand → the word the model knows.
const SLANG: &[(&str, &str)] = &[
    ("awsome", "awesome"),
    ("b4", "before"),
    ("coz", "because"),
    ("cuz", "because"),
    ("fab", "fabulous"),
    ("gr8", "great"),
    ("gud", "good"),
    ("luv", "love"),
    ("pls", "please"),
    ("plz", "please"),
    ("sux", "sucks"),
    ("thanx", "thanks"),
    ("thx", "thanks"),
    ("ty", "thanks"),
    ("u", "you"),
    ("ur", "your"),
    ("wtf", "terrible"),
    ("omg", "wow"),
    ("kinda", "somewhat"),
    ("meh", "mediocre"),
];

/// Chinese terms (Simplified, at most three characters) and their sign.
const ZH_TERMS: &[(&str, i8)] = &[
    ("不错", 1),
    ("很好", 1),
    ("好吃", 1),
    ("美味", 1),
    ("热情", 1),
    ("周到", 1),
    ("耐心", 1),
    ("满意", 1),
    ("喜欢", 1),
    ("推荐", 1),
    ("实惠", 1),
    ("划算", 1),
    ("新鲜", 1),
    ("正宗", 1),
    ("很快", 1),
    ("准时", 1),
    ("完好", 1),
    ("结实", 1),
    ("精细", 1),
    ("方便", 1),
    ("清晰", 1),
    ("好用", 1),
    ("感谢", 1),
    ("谢谢", 1),
    ("棒", 1),
    ("合理", 1),
    ("好", 1),
    ("赞", 1),
    ("给力", 1),
    ("靠谱", 1),
    ("点赞", 1),
    ("贴心", 1),
    ("好评", 1),
    ("惊喜", 1),
    ("干净", 1),
    ("太慢", -1),
    ("慢", -1),
    ("差", -1),
    ("太差", -1),
    ("很差", -1),
    ("坏了", -1),
    ("压坏", -1),
    ("瑕疵", -1),
    ("粗糙", -1),
    ("贵", -1),
    ("太贵", -1),
    ("不值", -1),
    ("被坑", -1),
    ("不耐烦", -1),
    ("没人理", -1),
    ("闪退", -1),
    ("失败", -1),
    ("报错", -1),
    ("延误", -1),
    ("迟迟", -1),
    ("太久", -1),
    ("太咸", -1),
    ("投诉", -1),
    ("退款", -1),
    ("生气", -1),
    ("失望", -1),
    ("糟糕", -1),
    ("垃圾", -1),
    ("不好", -1),
    ("难吃", -1),
    ("脏", -1),
    ("错", -1),
    ("丢", -1),
    ("坑", -1),
    ("烂", -1),
    ("差评", -1),
    ("恶心", -1),
    ("后悔", -1),
    ("骗", -1),
    ("敷衍", -1),
    ("拖", -1),
    ("卡顿", -1),
    ("不新鲜", -1),
    ("不舒服", -1),
    ("不透明", -1),
];

/// Characters that negate the term right after them.
const ZH_NEGATORS: &[char] = &['不', '没', '未', '别', '无'];

const EMOJI_POSITIVE: &[char] = &[
    '😀', '😁', '😂', '😃', '😄', '😆', '😊', '😋', '😍', '😘', '🥰', '🤩', '👍', '👏', '💯', '❤',
    '💕', '💖', '🎉', '🙏', '✨', '🌟', '⭐', '😻', '🥳', '💪', '👌', '☺',
];

const EMOJI_NEGATIVE: &[char] = &[
    '😡', '😠', '🤬', '😞', '😢', '😭', '👎', '💩', '😤', '🙄', '😒', '😩', '😫', '🤮', '🤢', '😣',
    '😖', '😓', '😔', '😟', '💔', '😰', '😱', '🤯', '😑', '😕',
];

struct Tables {
    en: Vec<(&'static [u8], i8)>,
    negators: Vec<&'static [u8]>,
    slang: Vec<(&'static [u8], &'static [u8])>,
    /// Packed terms (see [`pack`]) and their signs, sorted.
    zh: Vec<(u64, i8)>,
    /// Bit per last character (mod 1024): a cheap "no term ends here".
    zh_last: [u64; 16],
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let mut en: Vec<(&[u8], i8)> = EN_POSITIVE
        .iter()
        .map(|w| (w.as_bytes(), 1))
        .chain(EN_NEGATIVE.iter().map(|w| (w.as_bytes(), -1)))
        .collect();
    en.sort_unstable();
    en.dedup_by_key(|e| e.0);
    let mut negators: Vec<&[u8]> = EN_NEGATORS.iter().map(|w| w.as_bytes()).collect();
    negators.sort_unstable();
    let mut slang: Vec<(&[u8], &[u8])> = SLANG
        .iter()
        .map(|(a, b)| (a.as_bytes(), b.as_bytes()))
        .collect();
    slang.sort_unstable();
    let mut zh_last = [0u64; 16];
    let mut zh: Vec<(u64, i8)> = ZH_TERMS
        .iter()
        .filter_map(|(t, s)| {
            let chars: Vec<char> = t.chars().collect();
            let last = *chars.last()?;
            let bit = (last as usize) & 1023;
            zh_last[bit / 64] |= 1 << (bit % 64);
            Some((pack(&chars)?, *s))
        })
        .collect();
    zh.sort_unstable();
    Tables {
        en,
        negators,
        slang,
        zh,
        zh_last,
    }
});

/// Up to three characters in one integer (21 bits each).
fn pack(chars: &[char]) -> Option<u64> {
    if chars.is_empty() || chars.len() > 3 {
        return None;
    }
    Some(
        chars
            .iter()
            .fold(0u64, |acc, &c| (acc << 21) | u64::from(c)),
    )
}

/// The sign of an English word in the lexicon.
pub(crate) fn en(word: &[u8]) -> Option<i8> {
    let t = &TABLES.en;
    t.binary_search_by(|(w, _)| (*w).cmp(word))
        .ok()
        .map(|i| t[i].1)
}

/// Whether `word` opens a negation scope (`n't` endings included).
pub(crate) fn en_negator(word: &[u8]) -> bool {
    word.ends_with(b"n't") || TABLES.negators.binary_search(&word).is_ok()
}

/// Whether `word` closes a negation scope.
pub(crate) fn en_scope_end(word: &[u8]) -> bool {
    EN_SCOPE_END.iter().any(|w| w.as_bytes() == word)
}

/// The word a slang form stands for.
pub(crate) fn slang(word: &[u8]) -> Option<&'static [u8]> {
    let t = &TABLES.slang;
    t.binary_search_by(|(w, _)| (*w).cmp(word))
        .ok()
        .map(|i| t[i].1)
}

/// The sign of a Chinese term (1 to 3 folded characters).
#[inline]
pub(crate) fn zh(term: &[char]) -> Option<i8> {
    let t = &*TABLES;
    let last = *term.last()? as usize & 1023;
    if t.zh_last[last / 64] & (1 << (last % 64)) == 0 {
        return None;
    }
    let key = pack(term)?;
    t.zh.binary_search_by_key(&key, |e| e.0)
        .ok()
        .map(|i| t.zh[i].1)
}

/// Whether `c` negates the Chinese term after it.
#[inline]
pub(crate) fn zh_negator(c: char) -> bool {
    ZH_NEGATORS.contains(&c)
}

/// The sign of an emoji: 1, -1, or 0 when it has none.
pub(crate) fn emoji(c: char) -> i8 {
    if EMOJI_POSITIVE.contains(&c) {
        1
    } else if EMOJI_NEGATIVE.contains(&c) {
        -1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_term_is_reachable() {
        // Terms longer than three characters could never match (the
        // extractor keeps a window of three).
        for (t, s) in ZH_TERMS {
            let chars: Vec<char> = t.chars().collect();
            assert_eq!(zh(&chars), Some(*s), "{t}");
        }
        for w in EN_POSITIVE {
            assert_eq!(en(w.as_bytes()), Some(1), "{w}");
        }
        for (slang_form, word) in SLANG {
            assert_eq!(slang(slang_form.as_bytes()), Some(word.as_bytes()));
        }
        assert!(en_negator(b"didn't") && en_negator(b"never") && !en_negator(b"note"));
        assert_eq!((emoji('👍'), emoji('😡'), emoji('🍜')), (1, -1, 0));
    }
}
