//! Small, deterministic sample events of all five kinds (survey, call,
//! social post, order, click), valid as the collectors require, for the
//! end-to-end tests and the ingest normalisation bench that need a batch of
//! well-formed events without a story behind them. Realistic data with a
//! ground truth is the generator's job ([`crate::datagen`], `xoflow gen`);
//! the join's seeded journeys are [`crate::scenario`].

use xoflow_proto::v1::{
    CallTranscript, Channel, ClickAction, ClickEvent, CustomerIdentity, Event, LineItem, Location,
    MetricKind, Order, OrderStatus, Reactions, SocialPost, Speaker, SurveyAnswer, SurveyResponse,
    SurveyTrigger, Touchpoint, TranscriptSegment, event::Payload, survey_trigger::Ref,
};

pub use crate::datagen::SplitMix;

const STORES: [(&str, &str); 4] = [
    ("sz-01", "south-china"),
    ("sz-02", "south-china"),
    ("sh-01", "east-china"),
    ("bj-01", "north-china"),
];

const COMMENTS: [&str; 4] = [
    "配送太慢了，等了四天才到，客服也不回复",
    "The staff were friendly and the food came quickly.",
    "价格合理，服务很好，下次还来",
    "Order arrived late and the box was damaged.",
];

/// `n` events cycling through the five kinds, ids `"{prefix}-{i}"`,
/// occurring in the hour before `now_ms`.
pub fn events(seed: u64, n: usize, tenant: &str, prefix: &str, now_ms: i64) -> Vec<Event> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|i| {
            let (store, region) = STORES[rng.below(STORES.len() as u64) as usize];
            let customer = format!("c-{:05}", rng.below(5_000));
            let occurred = now_ms - 1 - rng.below(3_600_000) as i64;
            let at = |ms: i64| Some(xoflow_proto::from_unix_millis(ms));
            let comment = COMMENTS[rng.below(COMMENTS.len() as u64) as usize].to_string();
            let (touchpoint, channel, payload) = match i % 5 {
                0 => (
                    ("online-purchase", "after-sales", "delivery-survey"),
                    Channel::App,
                    Payload::Survey(SurveyResponse {
                        survey_id: "post-delivery".into(),
                        answers: vec![
                            SurveyAnswer {
                                question_id: "nps".into(),
                                kind: MetricKind::Nps as i32,
                                score: Some(rng.below(11) as f64),
                                scale_min: 0,
                                scale_max: 10,
                                text: String::new(),
                            },
                            SurveyAnswer {
                                question_id: "csat".into(),
                                kind: MetricKind::Csat as i32,
                                score: Some(1.0 + rng.below(5) as f64),
                                scale_min: 1,
                                scale_max: 5,
                                text: String::new(),
                            },
                        ],
                        language: if comment.is_ascii() { "en" } else { "zh" }.into(),
                        comment,
                        trigger: Some(SurveyTrigger {
                            r#ref: Some(Ref::OrderId(format!("o-{}", rng.below(100_000)))),
                        }),
                    }),
                ),
                1 => (
                    ("online-purchase", "after-sales", "support-call"),
                    Channel::CallCentre,
                    Payload::Call(CallTranscript {
                        call_id: format!("{prefix}-call-{i}"),
                        agent_id: format!("agent-{}", rng.below(40)),
                        queue: "after-sales".into(),
                        started_at: at(occurred - 300_000),
                        ended_at: at(occurred),
                        segments: vec![
                            TranscriptSegment {
                                speaker: Speaker::Customer as i32,
                                start_ms: 0,
                                end_ms: 4_000,
                                text: comment,
                            },
                            TranscriptSegment {
                                speaker: Speaker::Agent as i32,
                                start_ms: 4_500,
                                end_ms: 9_000,
                                text: "I'm sorry to hear that, let me check your order.".into(),
                            },
                        ],
                        disposition: "resolved".into(),
                        language: String::new(),
                    }),
                ),
                2 => (
                    ("dine-in", "dining", "dining-experience"),
                    Channel::Social,
                    Payload::Social(SocialPost {
                        platform: "weibo".into(),
                        post_id: format!("{prefix}-post-{i}"),
                        author_handle: format!("@user{}", rng.below(9_999)),
                        text: comment,
                        url: format!("https://weibo.example/p/{i}"),
                        reply_to: String::new(),
                        reactions: Some(Reactions {
                            likes: rng.below(500) as u32,
                            shares: rng.below(50) as u32,
                            comments: rng.below(80) as u32,
                        }),
                        language: String::new(),
                    }),
                ),
                3 => (
                    ("online-purchase", "checkout", "payment"),
                    Channel::Web,
                    Payload::Order(Order {
                        order_id: format!("{prefix}-order-{i}"),
                        status: OrderStatus::Paid as i32,
                        amount_minor: 1_000 + rng.below(100_000) as i64,
                        currency: "CNY".into(),
                        items: vec![LineItem {
                            sku: format!("sku-{}", rng.below(300)),
                            name: "套餐 A".into(),
                            quantity: 1 + rng.below(3) as u32,
                            unit_price_minor: 2_800,
                        }],
                        promised_delivery_at: at(occurred + 2 * 86_400_000),
                        delivered_at: None,
                    }),
                ),
                _ => (
                    ("online-purchase", "browse", "product-page"),
                    Channel::Web,
                    Payload::Click(ClickEvent {
                        session_id: format!("s-{}", rng.below(20_000)),
                        url: "https://shop.example/p/42".into(),
                        path: "/p/42".into(),
                        action: ClickAction::View as i32,
                        referrer: String::new(),
                        user_agent: "Mozilla/5.0".into(),
                        duration_ms: rng.below(60_000) as u32,
                    }),
                ),
            };
            Event {
                event_id: format!("{prefix}-{i}"),
                tenant: tenant.into(),
                source: "sample".into(),
                occurred_at: at(occurred),
                received_at: None,
                customer: Some(CustomerIdentity {
                    customer_id: customer.clone(),
                    email: if i % 3 == 0 {
                        format!("{customer}@example.com")
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }),
                touchpoint: Some(Touchpoint {
                    journey: touchpoint.0.into(),
                    stage: touchpoint.1.into(),
                    touchpoint: touchpoint.2.into(),
                    channel: channel as i32,
                }),
                location: Some(Location {
                    store_id: store.into(),
                    region: region.into(),
                }),
                attributes: [("campaign".to_string(), format!("c{}", i % 7))].into(),
                // Stamped by ingest from the tenant's time zone.
                utc_offset_seconds: 0,
                contact_consent: 0,
                payload: Some(payload),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use xoflow_proto::EventKind;

    #[test]
    fn same_seed_same_events_and_every_kind_present() {
        let a = events(7, 50, "acme", "t", 1_763_000_000_000);
        let b = events(7, 50, "acme", "t", 1_763_000_000_000);
        assert_eq!(a, b);
        assert_ne!(a, events(8, 50, "acme", "t", 1_763_000_000_000));
        for k in EventKind::ALL {
            assert_eq!(a.iter().filter(|e| e.kind() == Some(k)).count(), 10);
        }
    }
}
