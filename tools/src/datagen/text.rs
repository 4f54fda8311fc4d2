//! Free text the generator writes: survey comments, call lines and social
//! posts in Chinese and English, whose sentiment and topic are known, and
//! the personal data planted in some of them (which must never reach Kafka
//! unmasked).

use super::SplitMix;

/// What a text is about; the topic tags enrich is expected to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    Delivery,
    Price,
    Staff,
    Quality,
    Waiting,
    App,
    Food,
}

impl Topic {
    pub const fn as_str(self) -> &'static str {
        match self {
            Topic::Delivery => "delivery",
            Topic::Price => "price",
            Topic::Staff => "staff",
            Topic::Quality => "quality",
            Topic::Waiting => "waiting",
            Topic::App => "app",
            Topic::Food => "food",
        }
    }
}

/// The polarity the text was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Polarity {
    Negative,
    Neutral,
    Positive,
}

impl Polarity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Polarity::Negative => "negative",
            Polarity::Neutral => "neutral",
            Polarity::Positive => "positive",
        }
    }
}

type Lines = &'static [&'static str];

/// (topic, negative zh, negative en, positive zh, positive en)
const TEXTS: &[(Topic, Lines, Lines, Lines, Lines)] = &[
    (
        Topic::Delivery,
        &[
            "配送太慢了，等了好几天才到",
            "快递一直不更新，东西迟迟没送到",
            "送货延误，包装也压坏了",
        ],
        &[
            "Delivery was late again, I waited days",
            "The parcel arrived late and the box was crushed",
            "Shipping took forever, really disappointing",
        ],
        &["配送很快，第二天就到了", "快递小哥很准时，包装完好"],
        &[
            "Fast delivery, arrived the next day",
            "Courier was on time and the package was perfect",
        ],
    ),
    (
        Topic::Price,
        &["价格太贵了，不值这个钱", "收费不透明，感觉被坑了"],
        &[
            "Way too expensive for what you get",
            "I was overcharged and the pricing is confusing",
        ],
        &["价格实惠，性价比很高", "优惠力度很大，很划算"],
        &[
            "Great value for money",
            "Prices are fair and the discount was great",
        ],
    ),
    (
        Topic::Staff,
        &[
            "服务员态度很差，叫了好几次都没人理",
            "店员很不耐烦，服务太差了",
        ],
        &[
            "The staff were rude and ignored us",
            "Terrible service, the waiter was unfriendly",
        ],
        &["服务员很热情，服务周到", "店员非常耐心，态度很好"],
        &[
            "The staff were friendly and helpful",
            "Lovely service, the waiter was very attentive",
        ],
    ),
    (
        Topic::Quality,
        &["玩具用了两天就坏了，质量太差", "产品有瑕疵，做工很粗糙"],
        &[
            "The toy broke after two days, poor quality",
            "The product was defective and badly made",
        ],
        &["质量很好，做工精细", "产品很结实，孩子很喜欢"],
        &[
            "Excellent quality, well made",
            "Sturdy product, my kid loves it",
        ],
    ),
    (
        Topic::Waiting,
        &["排队等了一个小时，太久了", "上菜太慢，等得不耐烦"],
        &[
            "We queued for an hour, far too long",
            "Food took ages to arrive, the wait was terrible",
        ],
        &["不用排队，上菜很快", "等位很短，安排得很好"],
        &[
            "No queue at all and the food came quickly",
            "Short wait, very well organised",
        ],
    ),
    (
        Topic::App,
        &["APP老是闪退，付款失败", "网站一直报错，下单失败"],
        &[
            "The app keeps crashing at checkout",
            "The website showed an error and my payment failed",
        ],
        &["APP很好用，下单很方便", "网站界面清晰，操作简单"],
        &[
            "The app is easy to use and checkout was smooth",
            "Clean website, ordering was simple",
        ],
    ),
    (
        Topic::Food,
        &["菜太咸了，味道很一般", "食物不新鲜，吃完肚子不舒服"],
        &[
            "The food was cold and too salty",
            "Food was not fresh, quite disappointing",
        ],
        &["菜品很好吃，味道正宗", "食材新鲜，非常美味"],
        &[
            "Delicious food, very authentic",
            "Fresh ingredients and great taste",
        ],
    ),
];

const NEUTRAL_ZH: Lines = &["还可以吧，没什么特别的", "一般般，下次再看看"];
const NEUTRAL_EN: Lines = &["It was okay, nothing special", "Average experience overall"];

/// A written text and what the generator knows about it.
#[derive(Debug, Clone)]
pub struct Text {
    pub text: String,
    pub language: &'static str,
    pub polarity: Polarity,
    pub topic: Option<Topic>,
    /// Personal data planted in the text, verbatim.
    pub planted: Vec<String>,
}

fn pick<'a>(rng: &mut SplitMix, lines: &'a [&'a str]) -> &'a str {
    lines[rng.below(lines.len() as u64) as usize]
}

/// Writes a text about `topic` with `polarity`, in Chinese with probability
/// `zh_share`; plants personal data with probability `pii_share`.
pub fn write(
    rng: &mut SplitMix,
    topic: Topic,
    polarity: Polarity,
    zh_share: f64,
    pii_share: f64,
) -> Text {
    let zh = rng.chance(zh_share);
    let mut text = match polarity {
        Polarity::Neutral => pick(rng, if zh { NEUTRAL_ZH } else { NEUTRAL_EN }).to_string(),
        _ => {
            let (_, nz, ne, pz, pe) = TEXTS
                .iter()
                .find(|t| t.0 == topic)
                .copied()
                .unwrap_or(TEXTS[0]);
            let lines = match (polarity, zh) {
                (Polarity::Negative, true) => nz,
                (Polarity::Negative, false) => ne,
                (_, true) => pz,
                (_, false) => pe,
            };
            pick(rng, lines).to_string()
        }
    };
    let mut planted = Vec::new();
    if rng.chance(pii_share) {
        let (pii, zh_wrap, en_wrap) = plant(rng);
        text.push_str(if zh { zh_wrap } else { en_wrap });
        text.push_str(&pii);
        planted.push(pii);
    }
    Text {
        text,
        language: if zh { "zh" } else { "en" },
        polarity,
        topic: (polarity != Polarity::Neutral).then_some(topic),
        planted,
    }
}

/// One piece of personal data with the phrases that introduce it.
fn plant(rng: &mut SplitMix) -> (String, &'static str, &'static str) {
    match rng.below(4) {
        0 => (
            format!("1{}{:09}", 3 + rng.below(6), rng.below(1_000_000_000)),
            "，我的电话是",
            ". Call me back on ",
        ),
        1 => (
            format!("user{}@mail.example.com", rng.below(100_000)),
            "，请发邮件到",
            ". Email me at ",
        ),
        2 => (luhn_card(rng), "，卡号", ". My card number is "),
        _ => (resident_id(rng), "，身份证号", ". ID number "),
    }
}

/// A 16-digit card number with a valid Luhn check digit.
pub fn luhn_card(rng: &mut SplitMix) -> String {
    let mut digits: Vec<u32> = vec![6, 2, 2, 2];
    for _ in 0..11 {
        digits.push(rng.below(10) as u32);
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits.iter().map(|d| char::from(b'0' + *d as u8)).collect()
}

/// An 18-character PRC resident identity number with a valid check
/// character (GB 11643).
pub fn resident_id(rng: &mut SplitMix) -> String {
    let mut s = format!(
        "4403{:02}{}{:02}{:02}{:03}",
        rng.below(20),
        1970 + rng.below(35),
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(1000)
    );
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const C: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];
    let sum: u32 = s.bytes().zip(W).map(|(b, w)| u32::from(b - b'0') * w).sum();
    s.push(C[(sum % 11) as usize]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_numbers_carry_valid_check_digits() {
        let mut rng = SplitMix::new(3);
        for _ in 0..100 {
            let card = luhn_card(&mut rng);
            assert_eq!(card.len(), 16);
            let sum: u32 = card
                .bytes()
                .rev()
                .enumerate()
                .map(|(i, b)| {
                    let d = u32::from(b - b'0');
                    if i % 2 == 1 {
                        let x = d * 2;
                        if x > 9 { x - 9 } else { x }
                    } else {
                        d
                    }
                })
                .sum();
            assert_eq!(sum % 10, 0, "{card}");
            assert_eq!(resident_id(&mut rng).len(), 18);
        }
    }

    #[test]
    fn texts_follow_the_requested_language_and_topic() {
        let mut rng = SplitMix::new(9);
        let t = write(&mut rng, Topic::Delivery, Polarity::Negative, 1.0, 1.0);
        assert_eq!(t.language, "zh");
        assert_eq!(t.topic, Some(Topic::Delivery));
        assert_eq!(t.planted.len(), 1);
        assert!(t.text.contains(&t.planted[0]));
        let t = write(&mut rng, Topic::Staff, Polarity::Positive, 0.0, 0.0);
        assert_eq!(t.language, "en");
        assert!(t.planted.is_empty());
    }
}
