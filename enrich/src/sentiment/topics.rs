//! Topic tags, configured per tenant (`[enrich.topics]`): what a text is
//! about, by keyword and phrase rules per language, so that a hot-pot chain
//! and an education-kit subscription each count their own topics.
//!
//! ```text
//! [enrich.topics]                 built-in set (restaurants, delivery,
//!   default.<topic>.{en, zh}      e-commerce, education) unless replaced
//!   tenants.<tenant>.inherit      start from the default set (true) or not
//!   tenants.<tenant>.rules.<topic>.{en, zh}   add or replace topics
//! ```
//!
//! English keywords match whole words or phrases, ignoring ASCII case
//! ("app" in "APP总是闪退" too, never "app" inside "happy"); Chinese
//! keywords match as substrings, in Simplified or Traditional characters.
//! All rules of a set run as one Aho-Corasick automaton: one pass per text.
//! The rules are checked and compiled when the configuration is read, so a
//! bad rule stops start-up with its setting's path.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, LazyLock},
};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::Deserialize;

use super::features::{is_han, traditional_forms};

/// Most topics in one set (they are tracked in a 64-bit set per text).
pub const MAX_TOPICS: usize = 64;

/// One topic's keywords, per language.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// English words or phrases (ASCII), matched as whole words, any case.
    #[serde(default)]
    pub en: Vec<String>,
    /// Chinese terms (Simplified), matched as substrings; their Traditional
    /// spelling matches too.
    #[serde(default)]
    pub zh: Vec<String>,
}

/// A tenant's topic rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantTopics {
    /// Start from the default set (its topics can be replaced by name) or
    /// from nothing.
    #[serde(default = "default_inherit")]
    pub inherit: bool,
    /// Topics added to (or replacing, by name) the inherited ones.
    #[serde(default)]
    pub rules: BTreeMap<String, TopicRule>,
}

const fn default_inherit() -> bool {
    true
}

/// `[enrich.topics]` as written in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsSettings {
    /// Rules of tenants without their own; the built-in set when absent.
    #[serde(default)]
    pub default: Option<BTreeMap<String, TopicRule>>,
    /// Per-tenant rules, by tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantTopics>,
}

/// A rule that cannot work, with the path of its setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TopicsError {
    /// e.g. `enrich.topics.tenants.acme.rules.delivery.en[2]`.
    pub path: String,
    pub problem: String,
}

/// The compiled topic rules of every tenant, checked. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TopicsConfig(Arc<Compiled>);

#[derive(Debug)]
struct Compiled {
    default: TopicSet,
    tenants: HashMap<String, TopicSet>,
}

impl Default for TopicsConfig {
    /// The built-in set for every tenant.
    fn default() -> Self {
        static BUILTIN: LazyLock<TopicsConfig> = LazyLock::new(|| {
            match TopicsConfig::compile(&TopicsSettings::default()) {
                Ok(t) => t,
                // Covered by `the_builtin_set_compiles`.
                Err(e) => panic!("built-in topic rules: {e}"),
            }
        });
        BUILTIN.clone()
    }
}

impl TryFrom<TopicsSettings> for TopicsConfig {
    type Error = TopicsError;
    fn try_from(s: TopicsSettings) -> Result<Self, Self::Error> {
        Self::compile(&s)
    }
}

impl<'de> Deserialize<'de> for TopicsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let settings = TopicsSettings::deserialize(d)?;
        Self::compile(&settings).map_err(serde::de::Error::custom)
    }
}

impl TopicsConfig {
    /// Checks and compiles the settings; errors name the setting's path.
    pub fn compile(s: &TopicsSettings) -> Result<Self, TopicsError> {
        let base: BTreeMap<String, TopicRule> = match &s.default {
            Some(d) => d.clone(),
            None => builtin(),
        };
        let default = TopicSet::compile("enrich.topics.default", &base)?;
        let mut tenants = HashMap::new();
        for (tenant, t) in &s.tenants {
            let path = format!("enrich.topics.tenants.{tenant}");
            if tenant.trim().is_empty() {
                return Err(err(&path, "empty tenant id"));
            }
            let mut rules = if t.inherit {
                base.clone()
            } else {
                BTreeMap::new()
            };
            // Checked under their own path first, so errors point at them.
            TopicSet::compile(&format!("{path}.rules"), &t.rules)?;
            rules.extend(t.rules.clone());
            if rules.is_empty() {
                return Err(err(&path, "no topics (inherit = false and no rules)"));
            }
            tenants.insert(tenant.clone(), TopicSet::compile(&path, &rules)?);
        }
        Ok(Self(Arc::new(Compiled { default, tenants })))
    }

    /// The rules of `tenant` (the default set for a tenant without its own).
    pub fn for_tenant(&self, tenant: &str) -> &TopicSet {
        self.0.tenants.get(tenant).unwrap_or(&self.0.default)
    }
}

/// One tenant's compiled rules.
#[derive(Debug)]
pub struct TopicSet {
    /// Topic names, sorted: the order tags are reported in.
    names: Vec<String>,
    /// Every keyword of every topic.
    automaton: Option<AhoCorasick>,
    /// Per automaton pattern: its topic and whether it must stand as a word.
    patterns: Vec<(u8, bool)>,
}

fn err(path: &str, problem: &str) -> TopicsError {
    TopicsError {
        path: path.to_string(),
        problem: problem.to_string(),
    }
}

impl TopicSet {
    fn compile(path: &str, rules: &BTreeMap<String, TopicRule>) -> Result<Self, TopicsError> {
        if rules.len() > MAX_TOPICS {
            return Err(err(
                path,
                &format!("{} topics, at most {MAX_TOPICS}", rules.len()),
            ));
        }
        let mut names = Vec::new();
        let mut keywords: Vec<String> = Vec::new();
        let mut patterns = Vec::new();
        for (i, (name, rule)) in rules.iter().enumerate() {
            let at = format!("{path}.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(err(
                    &at,
                    "topic names are lower-case ASCII letters, digits, '-' and '_'",
                ));
            }
            if rule.en.is_empty() && rule.zh.is_empty() {
                return Err(err(&at, "no keywords (en or zh)"));
            }
            for (j, k) in rule.en.iter().enumerate() {
                let kp = format!("{at}.en[{j}]");
                let k = k.trim();
                if k.is_empty() {
                    return Err(err(&kp, "empty keyword"));
                }
                if !k.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b' ' | b'-' | b'\'' | b'&' | b'.')
                }) {
                    return Err(err(
                        &kp,
                        &format!(
                            "{k:?}: English keywords are ASCII words (letters, digits, ' ', '-', '\\'')"
                        ),
                    ));
                }
                keywords.push(k.to_ascii_lowercase());
                patterns.push((i as u8, true));
            }
            for (j, k) in rule.zh.iter().enumerate() {
                let kp = format!("{at}.zh[{j}]");
                let k = k.trim();
                if k.is_empty() {
                    return Err(err(&kp, "empty keyword"));
                }
                if !k.chars().any(is_han) || k.chars().any(char::is_whitespace) {
                    return Err(err(
                        &kp,
                        &format!("{k:?}: Chinese keywords hold Chinese characters and no spaces"),
                    ));
                }
                let traditional: String = k
                    .chars()
                    .map(|c| traditional_forms(c).next().unwrap_or(c))
                    .collect();
                keywords.push(k.to_string());
                patterns.push((i as u8, false));
                if traditional != k {
                    keywords.push(traditional);
                    patterns.push((i as u8, false));
                }
            }
            names.push(name.clone());
        }
        let automaton = if keywords.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::Standard)
                    .ascii_case_insensitive(true)
                    .build(&keywords)
                    .map_err(|e| err(path, &e.to_string()))?,
            )
        };
        Ok(Self {
            names,
            automaton,
            patterns,
        })
    }

    /// Topic tags found in `text`, each at most once, sorted by name.
    pub fn tags(&self, text: &str) -> Vec<String> {
        let Some(ac) = &self.automaton else {
            return Vec::new();
        };
        let bytes = text.as_bytes();
        let mut found = 0u64;
        for m in ac.find_overlapping_iter(text) {
            let (topic, word) = self.patterns[m.pattern().as_usize()];
            if word {
                let before = m.start().checked_sub(1).map(|i| bytes[i]);
                let after = bytes.get(m.end()).copied();
                if before.is_some_and(|b| b.is_ascii_alphanumeric())
                    || after.is_some_and(|b| b.is_ascii_alphanumeric())
                {
                    continue;
                }
            }
            found |= 1 << topic;
        }
        let mut out = Vec::with_capacity(found.count_ones() as usize);
        while found != 0 {
            let i = found.trailing_zeros() as usize;
            out.push(self.names[i].clone());
            found &= found - 1;
        }
        out
    }

    /// Topic names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// The built-in set: restaurants, delivery, e-commerce and education.
fn builtin() -> BTreeMap<String, TopicRule> {
    let rule = |en: &[&str], zh: &[&str]| TopicRule {
        en: en.iter().map(|s| s.to_string()).collect(),
        zh: zh.iter().map(|s| s.to_string()).collect(),
    };
    BTreeMap::from([
        (
            "after-sales".to_string(),
            rule(
                &[
                    "return",
                    "returned",
                    "exchange",
                    "warranty",
                    "replacement",
                    "refund",
                    "refunded",
                ],
                &["退货", "换货", "售后", "保修", "退款"],
            ),
        ),
        (
            "app".to_string(),
            rule(
                &[
                    "app", "website", "crashing", "crash", "crashes", "error", "checkout", "login",
                    "log in", "password",
                ],
                &[
                    "闪退", "网站", "报错", "下单", "付款", "登录", "卡顿", "页面",
                ],
            ),
        ),
        (
            "course".to_string(),
            rule(
                &[
                    "course",
                    "courses",
                    "lesson",
                    "lessons",
                    "curriculum",
                    "homework",
                    "course kit",
                ],
                &["课程", "教材", "作业", "上课", "课件"],
            ),
        ),
        (
            "delivery".to_string(),
            rule(
                &[
                    "delivery",
                    "delivered",
                    "deliver",
                    "shipping",
                    "shipped",
                    "courier",
                    "parcel",
                    "package",
                    "arrived",
                    "box",
                    "tracking",
                ],
                &[
                    "配送", "快递", "送货", "物流", "包装", "送到", "到货", "发货", "骑手",
                ],
            ),
        ),
        (
            "food".to_string(),
            rule(
                &[
                    "food",
                    "taste",
                    "tasted",
                    "salty",
                    "fresh",
                    "delicious",
                    "authentic",
                    "ingredients",
                    "dish",
                    "dishes",
                    "bland",
                ],
                &[
                    "菜品", "味道", "食物", "好吃", "食材", "美味", "太咸", "难吃", "口味",
                ],
            ),
        ),
        (
            "hygiene".to_string(),
            rule(
                &["dirty", "hygiene", "filthy", "unhygienic", "cockroach"],
                &["卫生", "脏", "异味", "头发", "蟑螂"],
            ),
        ),
        (
            "price".to_string(),
            rule(
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
                    "overpriced",
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
        ),
        (
            "quality".to_string(),
            rule(
                &[
                    "quality",
                    "broke",
                    "broken",
                    "defective",
                    "made",
                    "sturdy",
                    "toy",
                    "product",
                    "fake",
                ],
                &[
                    "质量", "坏了", "瑕疵", "做工", "结实", "玩具", "产品", "破损", "假货",
                ],
            ),
        ),
        (
            "staff".to_string(),
            rule(
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
        ),
        (
            "teaching".to_string(),
            rule(
                &["teacher", "teachers", "tutor", "instructor"],
                &["老师", "教师", "辅导", "讲解"],
            ),
        ),
        (
            "waiting".to_string(),
            rule(
                &["queue", "queued", "wait", "waited", "ages", "quickly"],
                &["排队", "等位", "上菜", "等了一个", "等得"],
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(text: &str) -> Vec<String> {
        TopicsConfig::default().for_tenant("any").tags(text)
    }

    #[test]
    fn the_builtin_set_compiles() {
        assert!(TopicsConfig::compile(&TopicsSettings::default()).is_ok());
    }

    #[test]
    fn builtin_topics_in_both_languages() {
        assert_eq!(
            tags("Delivery was late and the price too high"),
            vec!["delivery", "price"]
        );
        assert_eq!(tags("快递太慢，服务员态度差"), vec!["delivery", "staff"]);
        assert_eq!(
            tags("快遞太慢，服務員態度差"),
            vec!["delivery", "staff"],
            "Traditional"
        );
        assert!(tags("nothing to see").is_empty());
        assert!(
            tags("disappointed, happy").is_empty(),
            "no topic inside a word"
        );
        assert_eq!(tags("APP总是闪退"), vec!["app"]);
        assert_eq!(tags("I could not LOG IN"), vec!["app"]);
        assert_eq!(
            tags("老师讲解很清楚，课程包也很好"),
            vec!["course", "teaching"]
        );
    }

    /// (topic, English keywords, Chinese keywords)
    type Rules<'a> = &'a [(&'a str, &'a [&'a str], &'a [&'a str])];

    fn settings(toml_like: &[(&str, bool, Rules<'_>)]) -> TopicsSettings {
        let mut s = TopicsSettings::default();
        for (tenant, inherit, rules) in toml_like {
            let rules = rules
                .iter()
                .map(|(name, en, zh)| {
                    (
                        name.to_string(),
                        TopicRule {
                            en: en.iter().map(|s| s.to_string()).collect(),
                            zh: zh.iter().map(|s| s.to_string()).collect(),
                        },
                    )
                })
                .collect();
            s.tenants.insert(
                tenant.to_string(),
                TenantTopics {
                    inherit: *inherit,
                    rules,
                },
            );
        }
        s
    }

    #[test]
    fn tenants_add_replace_or_start_afresh() {
        let t = TopicsConfig::compile(&settings(&[
            (
                "hotpot",
                true,
                &[("broth", &["broth", "soup base"], &["锅底", "汤底"])],
            ),
            ("kits", false, &[("toy", &["toy", "robot"], &["玩具"])]),
        ]))
        .expect("valid rules");
        let hotpot = t.for_tenant("hotpot");
        assert_eq!(hotpot.tags("锅底太咸了"), vec!["broth", "food"]);
        assert_eq!(
            hotpot.tags("The soup base was bland"),
            vec!["broth", "food"]
        );
        let kits = t.for_tenant("kits");
        assert_eq!(kits.names(), ["toy"]);
        assert_eq!(kits.tags("玩具坏了，快递也慢"), vec!["toy"]);
        assert_eq!(kits.tags("The robot broke"), vec!["toy"]);
        assert_eq!(
            t.for_tenant("someone-else").tags("锅底太咸了"),
            vec!["food"],
            "other tenants keep the default set"
        );
    }

    #[test]
    fn read_from_the_configuration() {
        use serde_json::json;
        let t: TopicsConfig = serde_json::from_value(json!({
            "tenants": {"hotpot": {"rules": {"broth": {"zh": ["锅底"], "en": ["soup base"]}}}}
        }))
        .expect("valid rules");
        assert_eq!(t.for_tenant("hotpot").tags("鍋底不錯"), vec!["broth"]);
        let e = serde_json::from_value::<TopicsConfig>(json!({
            "tenants": {"hotpot": {"rules": {"broth": {"en": ["锅底"]}}}}
        }))
        .expect_err("Chinese in en");
        assert!(
            e.to_string()
                .contains("enrich.topics.tenants.hotpot.rules.broth.en[0]"),
            "{e}"
        );
        let e =
            serde_json::from_value::<TopicsConfig>(json!({"tenants": {"hotpot": {"rulez": {}}}}))
                .expect_err("unknown setting");
        assert!(e.to_string().contains("rulez"), "{e}");
    }

    #[test]
    fn bad_rules_name_their_setting() {
        let cases: &[(TopicsSettings, &str)] = &[
            (
                settings(&[("acme", true, &[("delivery", &["courier", " "], &[])])]),
                "enrich.topics.tenants.acme.rules.delivery.en[1]: empty keyword",
            ),
            (
                settings(&[("acme", true, &[("delivery", &["快递"], &[])])]),
                "enrich.topics.tenants.acme.rules.delivery.en[0]",
            ),
            (
                settings(&[("acme", true, &[("delivery", &[], &["fast delivery"])])]),
                "enrich.topics.tenants.acme.rules.delivery.zh[0]",
            ),
            (
                settings(&[("acme", true, &[("Delivery", &["x"], &[])])]),
                "enrich.topics.tenants.acme.rules.Delivery: topic names",
            ),
            (
                settings(&[("acme", true, &[("delivery", &[], &[])])]),
                "enrich.topics.tenants.acme.rules.delivery: no keywords",
            ),
            (
                settings(&[("acme", false, &[])]),
                "enrich.topics.tenants.acme: no topics",
            ),
        ];
        for (s, want) in cases {
            let e = TopicsConfig::compile(s).expect_err(want).to_string();
            assert!(e.starts_with(want), "{e} does not start with {want}");
        }
    }
}
