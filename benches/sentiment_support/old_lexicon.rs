//! The lexicon scorer that the model replaced (enrich/src/sentiment.rs before
//! issue 17), kept verbatim for the bench only: the ratio peer of
//! `benches/sentiment.rs`.
#![allow(dead_code, clippy::all)]

use xoflow_proto::v1::SentimentLabel;

/// Score and label of one text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sentiment {
    pub score: f64,
    pub label: SentimentLabel,
}

const NEUTRAL_BAND: f64 = 0.2;

const EN_POSITIVE: &[(&str, f64)] = &[
    ("good", 1.0),
    ("great", 1.5),
    ("excellent", 2.0),
    ("amazing", 2.0),
    ("awesome", 2.0),
    ("love", 1.5),
    ("loves", 1.5),
    ("loved", 1.5),
    ("lovely", 1.5),
    ("friendly", 1.2),
    ("helpful", 1.2),
    ("fast", 1.0),
    ("quick", 1.0),
    ("quickly", 1.0),
    ("perfect", 2.0),
    ("delicious", 1.5),
    ("fresh", 1.0),
    ("easy", 1.0),
    ("smooth", 1.0),
    ("happy", 1.5),
    ("satisfied", 1.5),
    ("recommend", 1.2),
    ("attentive", 1.2),
    ("polite", 1.0),
    ("clean", 0.8),
    ("fair", 0.8),
    ("value", 0.6),
    ("sturdy", 1.0),
    ("authentic", 1.0),
    ("thanks", 0.8),
    ("thank", 0.8),
    ("nice", 1.0),
    ("best", 1.5),
    ("well", 0.6),
    ("organised", 0.8),
    ("organized", 0.8),
    ("resolved", 1.0),
    ("efficient", 1.2),
    ("wonderful", 2.0),
    ("pleasant", 1.2),
    ("simple", 0.6),
    ("on", 0.0),
    ("time", 0.0),
];

const EN_NEGATIVE: &[(&str, f64)] = &[
    ("bad", 1.2),
    ("terrible", 2.0),
    ("awful", 2.0),
    ("horrible", 2.0),
    ("worst", 2.0),
    ("poor", 1.2),
    ("late", 1.2),
    ("slow", 1.0),
    ("rude", 1.5),
    ("unfriendly", 1.5),
    ("ignored", 1.5),
    ("broke", 1.5),
    ("broken", 1.5),
    ("defective", 1.5),
    ("damaged", 1.5),
    ("crushed", 1.2),
    ("disappointing", 1.5),
    ("disappointed", 1.5),
    ("expensive", 1.0),
    ("overcharged", 1.5),
    ("confusing", 1.0),
    ("crashing", 1.5),
    ("crashes", 1.5),
    ("crash", 1.5),
    ("error", 1.0),
    ("failed", 1.5),
    ("fail", 1.2),
    ("cold", 0.8),
    ("salty", 0.8),
    ("forever", 1.0),
    ("ages", 1.0),
    ("wait", 0.4),
    ("waited", 0.6),
    ("complaint", 1.5),
    ("refund", 0.8),
    ("angry", 1.8),
    ("annoyed", 1.5),
    ("never", 0.0),
    ("dirty", 1.5),
    ("wrong", 1.2),
    ("missing", 1.0),
    ("lost", 1.2),
    ("badly", 1.2),
    ("problem", 1.0),
    ("issue", 0.8),
    ("useless", 1.8),
    ("waste", 1.5),
    ("sorry", 0.3),
    ("unacceptable", 2.0),
    ("scam", 2.0),
    ("cancel", 0.8),
    ("delay", 1.2),
    ("delayed", 1.2),
];

const EN_NEGATORS: &[&str] = &[
    "not", "no", "never", "don't", "didn't", "isn't", "wasn't", "hardly", "without", "nothing",
];
const EN_INTENSIFIERS: &[(&str, f64)] = &[
    ("very", 1.5),
    ("really", 1.5),
    ("so", 1.3),
    ("too", 1.3),
    ("extremely", 2.0),
    ("way", 1.3),
    ("super", 1.5),
    ("absolutely", 1.8),
    ("totally", 1.5),
];

/// Chinese terms: (term, weight); negative weights are negative.
const ZH_TERMS: &[(&str, f64)] = &[
    ("不错", 1.2),
    ("很好", 1.5),
    ("好吃", 1.5),
    ("美味", 1.5),
    ("热情", 1.2),
    ("周到", 1.2),
    ("耐心", 1.2),
    ("满意", 1.5),
    ("喜欢", 1.2),
    ("推荐", 1.2),
    ("实惠", 1.2),
    ("划算", 1.2),
    ("性价比很高", 1.5),
    ("新鲜", 1.0),
    ("正宗", 1.0),
    ("很快", 1.2),
    ("准时", 1.2),
    ("完好", 1.0),
    ("结实", 1.0),
    ("精细", 1.0),
    ("方便", 1.0),
    ("简单", 0.6),
    ("清晰", 0.8),
    ("好用", 1.2),
    ("感谢", 1.0),
    ("谢谢", 0.8),
    ("棒", 1.5),
    ("优惠", 0.8),
    ("合理", 0.8),
    ("下次还来", 1.5),
    ("很好用", 1.5),
    ("态度很好", 1.5),
    ("质量很好", 1.5),
    ("安排得很好", 1.2),
    ("好", 0.8),
    ("太慢", -1.5),
    ("慢", -1.0),
    ("差", -1.5),
    ("太差", -2.0),
    ("很差", -2.0),
    ("坏了", -1.5),
    ("压坏", -1.5),
    ("瑕疵", -1.5),
    ("粗糙", -1.2),
    ("贵", -1.0),
    ("太贵", -1.5),
    ("不值", -1.5),
    ("被坑", -2.0),
    ("不透明", -1.2),
    ("不耐烦", -1.5),
    ("没人理", -1.8),
    ("闪退", -1.5),
    ("失败", -1.5),
    ("报错", -1.2),
    ("延误", -1.5),
    ("不更新", -1.0),
    ("迟迟", -1.0),
    ("太久", -1.5),
    ("太咸", -1.2),
    ("一般", -0.4),
    ("不新鲜", -1.5),
    ("不舒服", -1.5),
    ("投诉", -1.8),
    ("退款", -0.8),
    ("生气", -1.8),
    ("失望", -1.8),
    ("糟糕", -2.0),
    ("垃圾", -2.0),
    ("不好", -1.2),
    ("难吃", -1.8),
    ("脏", -1.5),
    ("错", -1.0),
    ("丢", -1.2),
    ("等了", -0.8),
    ("抱歉", -0.3),
    ("不便", -0.6),
];

const ZH_NEGATORS: &[&str] = &["没有", "不", "没", "未", "别"];
const ZH_INTENSIFIERS: &[(&str, f64)] = &[
    ("非常", 1.5),
    ("太", 1.3),
    ("很", 1.2),
    ("特别", 1.5),
    ("超级", 1.5),
];

/// Scores `text`. `zh` selects the Chinese path; mixed text is scored by
/// both and summed.
pub fn score(text: &str) -> Sentiment {
    let raw = score_en(text) + score_zh(text);
    let score = raw / (raw.abs() + 1.5);
    let label = if text.trim().is_empty() {
        SentimentLabel::Unspecified
    } else if score <= -NEUTRAL_BAND {
        SentimentLabel::Negative
    } else if score >= NEUTRAL_BAND {
        SentimentLabel::Positive
    } else {
        SentimentLabel::Neutral
    };
    Sentiment { score, label }
}

fn lookup(list: &[(&str, f64)], word: &str) -> Option<f64> {
    list.iter().find(|(w, _)| *w == word).map(|(_, v)| *v)
}

fn score_en(text: &str) -> f64 {
    let mut total = 0.0;
    let mut negate_left = 0u8;
    let mut boost = 1.0;
    let lower = text.to_ascii_lowercase();
    // Punctuation ends the reach of a negator: "never again, terrible".
    let words = lower
        .split([',', '.', ';', '!', '?', '，', '。'])
        .flat_map(|clause| {
            clause
                .split(|c: char| !(c.is_ascii_alphabetic() || c == '\''))
                .chain(std::iter::once("|"))
        });
    for word in words {
        if word.is_empty() {
            continue;
        }
        if word == "|" {
            negate_left = 0;
            boost = 1.0;
            continue;
        }
        if EN_NEGATORS.contains(&word) || word.ends_with("n't") {
            negate_left = 3;
            continue;
        }
        if let Some(b) = lookup(EN_INTENSIFIERS, word) {
            boost = b;
            continue;
        }
        let w = lookup(EN_POSITIVE, word)
            .or_else(|| lookup(EN_NEGATIVE, word).map(|v| -v))
            .unwrap_or(0.0);
        if w != 0.0 {
            let sign = if negate_left > 0 { -0.8 } else { 1.0 };
            total += w * boost * sign;
        }
        boost = 1.0;
        negate_left = negate_left.saturating_sub(1);
    }
    total
}

fn score_zh(text: &str) -> f64 {
    let mut total = 0.0;
    let mut i = 0;
    let mut boost = 1.0;
    let mut negated = false;
    while i < text.len() {
        let rest = &text[i..];
        // Longest lexicon term starting here.
        let term = ZH_TERMS
            .iter()
            .filter(|(t, _)| rest.starts_with(t))
            .max_by_key(|(t, _)| t.len());
        if let Some((t, w)) = term {
            let sign = if negated { -0.8 } else { 1.0 };
            total += w * boost * sign;
            boost = 1.0;
            negated = false;
            i += t.len();
            continue;
        }
        if let Some(n) = ZH_NEGATORS.iter().find(|n| rest.starts_with(*n)) {
            negated = true;
            i += n.len();
            continue;
        }
        if let Some((t, b)) = ZH_INTENSIFIERS.iter().find(|(t, _)| rest.starts_with(t)) {
            boost = *b;
            i += t.len();
            continue;
        }
        let ch = rest.chars().next().map(char::len_utf8).unwrap_or(1);
        if !rest.starts_with(|c: char| c.is_alphanumeric()) {
            // Punctuation ends the reach of a negator or intensifier.
            negated = false;
            boost = 1.0;
        }
        i += ch;
    }
    total
}

/// Topic keywords: (topic, English words, Chinese substrings).
const TOPICS: &[(&str, &[&str], &[&str])] = &[
    (
        "delivery",
        &[
            "delivery",
            "delivered",
            "deliver",
            "shipping",
            "courier",
            "parcel",
            "package",
            "arrived",
            "box",
        ],
        &["配送", "快递", "送货", "物流", "包装", "送到", "到货"],
    ),
    (
        "price",
        &[
            "price",
            "prices",
            "pricing",
            "expensive",
            "cheap",
            "overcharged",
            "value",
            "cost",
            "discount",
        ],
        &[
            "价格",
            "贵",
            "便宜",
            "性价比",
            "收费",
            "优惠",
            "划算",
            "实惠",
        ],
    ),
    (
        "staff",
        &[
            "staff",
            "waiter",
            "waitress",
            "rude",
            "friendly",
            "agent",
            "attentive",
            "service",
        ],
        &["服务员", "店员", "态度", "客服", "服务"],
    ),
    (
        "quality",
        &[
            "quality",
            "broke",
            "broken",
            "defective",
            "made",
            "sturdy",
            "toy",
            "product",
        ],
        &["质量", "坏了", "瑕疵", "做工", "结实", "玩具", "产品"],
    ),
    (
        "waiting",
        &["queue", "queued", "wait", "waited", "ages", "quickly"],
        &["排队", "等位", "上菜", "等了一个", "等得"],
    ),
    (
        "app",
        &[
            "app", "website", "crashing", "crash", "error", "checkout", "login",
        ],
        // Latin words are matched as words (above), never inside others.
        &["闪退", "网站", "报错", "下单", "付款"],
    ),
    (
        "food",
        &[
            "food",
            "taste",
            "salty",
            "fresh",
            "delicious",
            "authentic",
            "ingredients",
        ],
        &[
            "菜品", "味道", "食物", "好吃", "食材", "美味", "太咸", "难吃",
        ],
    ),
];

/// Topic tags found in `text`, in a fixed order, each at most once.
pub fn topics(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    TOPICS
        .iter()
        .filter(|(_, en, zh)| {
            en.iter().any(|k| words.contains(k)) || zh.iter().any(|k| text.contains(k))
        })
        // "APP" in Chinese text is found by the word split: it is ASCII.
        .map(|(t, _, _)| (*t).to_string())
        .collect()
}
