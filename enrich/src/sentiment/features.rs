//! Text → hashed features, the one implementation shared by training and
//! scoring: the training command (`enrich/train/`) reads the bucket indices
//! this module prints through `examples/text_model.rs`, so the weights and
//! the scorer can never disagree on what a feature is.
//!
//! One pass over the text, no allocation:
//!
//! ```text
//! char ──► fold (full-width → ASCII, Traditional → Simplified, lower case)
//!   ├─ Han ideograph ──► character 1-, 2-, 3-grams within a run of Han
//!   │                    + lexicon term ending here (negated after 不/没/未/别)
//!   ├─ letter/digit  ──► word (elongation squeezed, slang mapped):
//!   │                    unigram (negated in a negator's 3-word scope) + bigram
//!   │                    + lexicon word (sign flipped in scope)
//!   ├─ emoji         ──► emoji unigram + emoji lexicon sign
//!   └─ punctuation   ──► ends the clause (negation scope, bigrams, n-grams);
//!                        `!`, `?` and emoticons are features of their own
//! ```
//!
//! Every feature is a 64-bit hash in its own namespace, reduced to
//! `2^bits` buckets; a text's vector is its feature counts divided by the
//! square root of their total, so long and short texts score alike.

use std::sync::LazyLock;

use super::lexicon;

/// Namespaces: one per kind of feature, so "好" the character and "好"
/// inside a bigram never share a hash by construction.
mod ns {
    pub const HAN1: u64 = 0x11;
    pub const HAN2: u64 = 0x12;
    pub const HAN3: u64 = 0x13;
    pub const WORD: u64 = 0x21;
    pub const WORD_NEG: u64 = 0x22;
    pub const BIGRAM: u64 = 0x23;
    pub const EMOJI: u64 = 0x31;
    pub const MARK: u64 = 0x41;
    pub const LEX_POS: u64 = 0x51;
    pub const LEX_NEG: u64 = 0x52;
}

/// Words a negator reaches ("not" in "no queue at all and the food came
/// quickly" stops before "quickly"); punctuation and "but" end it sooner.
const NEGATION_SCOPE: u8 = 3;

/// The longest word looked up in the negator, slang and lexicon tables;
/// longer words are hashed on their first `WORD_MAX` bytes and their length.
const WORD_MAX: usize = 24;

/// Traditional → Simplified, common characters (`t2s.txt`: pairs "繁简"),
/// with a bit per character of the main CJK block saying "in the table",
/// so that the common case (a Simplified character) costs one bit test.
struct Fold {
    pairs: Vec<(char, char)>,
    bits: Vec<u64>,
}

const FOLD_FROM: u32 = 0x4e00;
const FOLD_TO: u32 = 0xa000;

static T2S: LazyLock<Fold> = LazyLock::new(|| {
    let mut pairs: Vec<(char, char)> = include_str!("t2s.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::split_whitespace)
        .filter_map(|p| {
            let mut c = p.chars();
            Some((c.next()?, c.next()?))
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup_by_key(|p| p.0);
    let mut bits = vec![0u64; (FOLD_TO - FOLD_FROM).div_ceil(64) as usize];
    for (t, _) in &pairs {
        let i = (*t as u32).wrapping_sub(FOLD_FROM) as usize;
        if let Some(w) = bits.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    Fold { pairs, bits }
});

#[inline]
fn simplified(c: char) -> char {
    let t = &*T2S;
    let i = (c as u32).wrapping_sub(FOLD_FROM) as usize;
    let in_block = (c as u32) < FOLD_TO;
    if in_block && t.bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) == 0) {
        return c;
    }
    match t.pairs.binary_search_by_key(&c, |p| p.0) {
        Ok(i) => t.pairs[i].1,
        Err(_) => c,
    }
}

/// Simplified → the Traditional forms folded into it (for topic keywords).
pub(crate) fn traditional_forms(c: char) -> impl Iterator<Item = char> {
    T2S.pairs
        .iter()
        .filter(move |(_, s)| *s == c)
        .map(|(t, _)| *t)
}

#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline]
fn combine(a: u64, b: u64) -> u64 {
    mix(a.rotate_left(23) ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[inline]
fn char_hash(c: char) -> u64 {
    mix(u64::from(c) | (1 << 40))
}

fn bytes_hash(b: &[u8], len: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ len as u64;
    for &x in b {
        h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// Whether `c` is a CJK ideograph (Chinese text).
#[inline]
pub(crate) fn is_han(c: char) -> bool {
    matches!(c, '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}' | '\u{f900}'..='\u{faff}')
}

#[inline]
fn is_emoji(c: char) -> bool {
    matches!(c, '\u{1f300}'..='\u{1faff}' | '\u{2600}'..='\u{27bf}' | '\u{2b50}' | '\u{2b55}')
}

/// The folded form of one character: full-width ASCII to ASCII, the curly
/// apostrophe to `'`, Traditional to Simplified, ASCII to lower case.
#[inline]
pub(crate) fn fold(c: char) -> char {
    match c {
        'A'..='Z' => c.to_ascii_lowercase(),
        '\u{ff01}'..='\u{ff5e}' => {
            let a = char::from_u32(c as u32 - 0xfee0).unwrap_or(c);
            // ，。！？ and friends keep their clause-ending role either way.
            a.to_ascii_lowercase()
        }
        '\u{2019}' | '\u{2018}' | '`' => '\'',
        c if is_han(c) => simplified(c),
        c => c,
    }
}

/// Punctuation that ends a clause: the reach of a negator and of n-grams.
#[inline]
fn ends_clause(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | ';'
            | ':'
            | '!'
            | '?'
            | '\n'
            | '('
            | ')'
            | '"'
            | '。'
            | '，'
            | '、'
            | '；'
            | '：'
            | '…'
            | '~'
            | '～'
            | '—'
            | '【'
            | '】'
            | '「'
            | '」'
            | '《'
            | '》'
            | '“'
            | '”'
    )
}

/// Receives features: (bucket-free 64-bit hash). The caller reduces it.
pub(crate) trait Sink {
    fn feature(&mut self, hash: u64);
}

impl<F: FnMut(u64)> Sink for F {
    #[inline]
    fn feature(&mut self, hash: u64) {
        self(hash)
    }
}

/// Counts of the kinds of units seen, for the language share.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seen {
    pub han: u32,
    pub words: u32,
}

struct Extractor<'s, S: Sink> {
    sink: &'s mut S,
    lexicon: bool,
    // Han run: the last three characters (folded), newest last.
    han: [char; 3],
    han_run: u32,
    // The character before the current lexicon candidate's start.
    // Word being read.
    word: [u8; WORD_MAX],
    word_len: usize,
    word_hash_tail: u64,
    last_byte: u8,
    repeat: u8,
    prev_word: u64,
    /// Words left in the current negator's scope.
    negated: u8,
    seen: Seen,
    prev_char: char,
}

/// Runs the extractor over `text`, giving every feature hash to `sink`.
pub(crate) fn extract<S: Sink>(text: &str, lexicon: bool, sink: &mut S) -> Seen {
    let mut x = Extractor {
        sink,
        lexicon,
        han: ['\0'; 3],
        han_run: 0,
        word: [0; WORD_MAX],
        word_len: 0,
        word_hash_tail: 0,
        last_byte: 0,
        repeat: 0,
        prev_word: 0,
        negated: 0,
        seen: Seen::default(),
        prev_char: ' ',
    };
    for raw in text.chars() {
        let c = fold(raw);
        x.step(c);
        x.prev_char = c;
    }
    x.end_word();
    x.seen
}

impl<S: Sink> Extractor<'_, S> {
    #[inline]
    fn step(&mut self, c: char) {
        if is_han(c) {
            self.end_word();
            self.han_char(c);
        } else if c.is_alphanumeric() || (c == '\'' && self.word_len > 0) {
            self.han_run = 0;
            self.word_char(c);
        } else {
            self.end_word();
            self.han_run = 0;
            if is_emoji(c) {
                self.sink.feature(combine(ns::EMOJI, char_hash(c)));
                if self.lexicon {
                    match lexicon::emoji(c) {
                        1 => self.sink.feature(mix(ns::LEX_POS)),
                        -1 => self.sink.feature(mix(ns::LEX_NEG)),
                        _ => {}
                    }
                }
            } else if c == '!' || c == '?' {
                self.sink.feature(combine(ns::MARK, c as u64));
            } else if (c == ')' || c == '(') && matches!(self.prev_char, ':' | ';' | '=' | '-') {
                // :) :-( ;) =)
                self.sink.feature(combine(ns::MARK, c as u64 + 0x100));
            }
            if ends_clause(c) {
                self.negated = 0;
                self.prev_word = 0;
            }
        }
    }

    #[inline]
    fn han_char(&mut self, c: char) {
        self.seen.han += 1;
        let h0 = char_hash(c);
        self.sink.feature(combine(ns::HAN1, h0));
        let run = self.han_run;
        if run >= 1 {
            let h1 = char_hash(self.han[2]);
            let bi = combine(h1, h0);
            self.sink.feature(combine(ns::HAN2, bi));
            if run >= 2 {
                let h2 = char_hash(self.han[1]);
                let tri = combine(h2, bi);
                self.sink.feature(combine(ns::HAN3, tri));
            }
        }
        if self.lexicon {
            self.han_lexicon(c);
        }
        self.han = [self.han[1], self.han[2], c];
        self.han_run = run + 1;
    }

    /// The longest lexicon term (up to 3 characters) ending at `c`; a
    /// negator right before it flips its sign.
    fn han_lexicon(&mut self, c: char) {
        let run = self.han_run as usize;
        let window = [self.han[0], self.han[1], self.han[2], c];
        for len in (1..=3usize.min(run + 1)).rev() {
            let term = &window[4 - len..];
            if let Some(sign) = lexicon::zh(term) {
                let before = if run >= len { window[3 - len] } else { '\0' };
                let sign = if lexicon::zh_negator(before) {
                    -sign
                } else {
                    sign
                };
                let ns = if sign > 0 { ns::LEX_POS } else { ns::LEX_NEG };
                self.sink.feature(mix(ns));
                return;
            }
        }
    }

    #[inline]
    fn word_char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            // Elongation: "soooo" reads as "soo".
            if b == self.last_byte {
                self.repeat += 1;
                if self.repeat >= 2 {
                    continue;
                }
            } else {
                self.repeat = 0;
            }
            self.last_byte = b;
            if self.word_len < WORD_MAX {
                self.word[self.word_len] = b;
            } else {
                self.word_hash_tail =
                    (self.word_hash_tail ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            self.word_len += 1;
        }
    }

    fn end_word(&mut self) {
        if self.word_len == 0 {
            return;
        }
        let len = self.word_len;
        self.word_len = 0;
        self.last_byte = 0;
        self.repeat = 0;
        let buf = self.word;
        let stored = &buf[..len.min(WORD_MAX)];
        // A trailing apostrophe ("dogs'") is not part of the word.
        let stored = stored.strip_suffix(b"'").unwrap_or(stored);
        if stored.is_empty() {
            return;
        }
        self.seen.words += 1;
        let word: &[u8] = if len <= WORD_MAX {
            lexicon::slang(stored).unwrap_or(stored)
        } else {
            stored
        };
        let h = if len <= WORD_MAX {
            bytes_hash(word, word.len())
        } else {
            combine(bytes_hash(word, len), self.word_hash_tail)
        };
        self.word_hash_tail = 0;
        if len <= WORD_MAX && lexicon::en_negator(word) {
            self.negated = NEGATION_SCOPE;
            self.sink.feature(combine(ns::WORD, h));
            self.bigram(h);
            return;
        }
        if len <= WORD_MAX && lexicon::en_scope_end(word) {
            self.negated = 0;
        }
        let negated = self.negated > 0;
        self.negated = self.negated.saturating_sub(1);
        let ns = if negated { ns::WORD_NEG } else { ns::WORD };
        self.sink.feature(combine(ns, h));
        self.bigram(h);
        if self.lexicon
            && len <= WORD_MAX
            && let Some(sign) = lexicon::en(word)
        {
            let sign = if negated { -sign } else { sign };
            let ns = if sign > 0 { ns::LEX_POS } else { ns::LEX_NEG };
            self.sink.feature(mix(ns));
        }
    }

    #[inline]
    fn bigram(&mut self, h: u64) {
        if self.prev_word != 0 {
            self.sink
                .feature(combine(ns::BIGRAM, combine(self.prev_word, h)));
        }
        self.prev_word = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(text: &str) -> Vec<u64> {
        let mut v = Vec::new();
        extract(text, true, &mut |h| v.push(h));
        v
    }

    #[test]
    fn traditional_folds_to_simplified() {
        assert_eq!(hashes("這個質量很差"), hashes("这个质量很差"));
        assert_eq!(hashes("服務態度"), hashes("服务态度"));
    }

    #[test]
    fn width_case_and_elongation_fold() {
        assert_eq!(hashes("ＧＯＯＤ！"), hashes("good!"));
        assert_eq!(hashes("Sooooo GOOD"), hashes("soo good"));
        assert_eq!(hashes("don’t"), hashes("don't"));
    }

    #[test]
    fn negation_scope_ends_at_punctuation_or_three_words() {
        let mut plain = hashes("good");
        let negated = hashes("not good");
        assert!(
            !negated.contains(&plain[0]),
            "negated word is its own feature"
        );
        plain = hashes("not bad. good");
        assert!(
            hashes("not at all a good").contains(&hashes("good")[0]),
            "beyond three words"
        );
        assert!(
            plain.contains(&hashes("good")[0]),
            "scope ended by the full stop"
        );
    }

    #[test]
    fn counts_languages() {
        let seen = extract("这个app太卡了 but ok", false, &mut |_| {});
        assert_eq!((seen.han, seen.words), (5, 3));
    }
}
