//! A small, seeded customer-journey scenario for the join's golden-file,
//! property and failover tests: customers who order (some deliveries late),
//! browse, call support, answer surveys known only by their e-mail hash and
//! post on social media under a handle nobody linked.
//!
//! Not the demo generator (`xoflow gen`): this one is tiny, depends only on
//! the proto types (and the generator's [`SplitMix`] for its seeded
//! choices), and exercises every branch of the join in a few dozen events.
//! It lives here, not in `xoflow-enrich`, so the stage's library ships no
//! test code; enrich's tests reach it through a dev-dependency.

use xoflow_proto::v1::{
    CallTranscript, ClickAction, ClickEvent, CustomerIdentity, Event, MetricKind, Order,
    OrderStatus, SocialPost, Speaker, SurveyAnswer, SurveyResponse, SurveyTrigger, Touchpoint,
    TranscriptSegment, event::Payload, survey_trigger::Ref,
};

use crate::datagen::SplitMix;

const MIN: i64 = 60_000;

fn event(id: String, at: i64, who: CustomerIdentity, stage: &str, payload: Payload) -> Event {
    Event {
        event_id: id,
        tenant: "shop".into(),
        source: "scenario".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(at)),
        customer: Some(who),
        touchpoint: Some(Touchpoint {
            journey: "online-purchase".into(),
            stage: stage.into(),
            touchpoint: stage.into(),
            channel: 2,
        }),
        payload: Some(payload),
        ..Default::default()
    }
}

/// The journeys of customers `c<n>` for n in `customers`, starting at
/// `start_ms`, sorted by event time (ties by id). Same seed, same events.
pub fn journeys(seed: u64, customers: std::ops::Range<usize>, start_ms: i64) -> Vec<Event> {
    journeys_tagged(seed, customers, start_ms, "")
}

/// [`journeys`] whose event, order, session and call ids start with `tag`,
/// so that the same customers can have several journeys.
pub fn journeys_tagged(
    seed: u64,
    customers: std::ops::Range<usize>,
    start_ms: i64,
    tag: &str,
) -> Vec<Event> {
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::new();
    for c in customers {
        let cid = format!("c{c}");
        let email = format!("eh-{c}");
        let known = CustomerIdentity {
            customer_id: cid.clone(),
            email_hash: email.clone(),
            ..Default::default()
        };
        let by_email = CustomerIdentity {
            email_hash: email.clone(),
            ..Default::default()
        };
        let mut t = start_ms + rng.below(20) as i64 * MIN;
        let id = |n: &str| format!("{tag}{cid}-{n}");
        let session = id("s");
        for (n, action) in [
            ClickAction::View,
            ClickAction::View,
            if rng.below(3) == 0 {
                ClickAction::Error
            } else {
                ClickAction::Click
            },
            ClickAction::Checkout,
        ]
        .into_iter()
        .enumerate()
        {
            t += rng.below(3) as i64 * MIN + 1_000;
            out.push(event(
                id(&format!("click{n}")),
                t,
                known.clone(),
                "browse",
                Payload::Click(ClickEvent {
                    session_id: session.clone(),
                    url: "https://shop.example/p".into(),
                    path: "/p".into(),
                    action: action as i32,
                    ..Default::default()
                }),
            ));
        }
        let amount = 10_000 + 1_000 * rng.below(50) as i64;
        let order_id = id("o");
        let placed = t + MIN;
        let promised = placed + 60 * MIN;
        let late = rng.below(2) == 0;
        let delivered = promised + if late { 45 * MIN } else { -10 * MIN };
        let order = |status: OrderStatus, delivered_at: Option<i64>| {
            Payload::Order(Order {
                order_id: order_id.clone(),
                status: status as i32,
                amount_minor: amount,
                currency: "CNY".into(),
                promised_delivery_at: Some(xoflow_proto::from_unix_millis(promised)),
                delivered_at: delivered_at.map(xoflow_proto::from_unix_millis),
                ..Default::default()
            })
        };
        out.push(event(
            id("placed"),
            placed,
            known.clone(),
            "checkout",
            order(OrderStatus::Placed, None),
        ));
        out.push(event(
            id("paid"),
            placed + MIN,
            known.clone(),
            "checkout",
            order(OrderStatus::Paid, None),
        ));
        out.push(event(
            id("delivered"),
            delivered,
            known.clone(),
            "delivery",
            order(OrderStatus::Delivered, Some(delivered)),
        ));
        if late {
            out.push(event(
                id("call"),
                delivered + 5 * MIN,
                known.clone(),
                "delivery",
                Payload::Call(CallTranscript {
                    call_id: id("call"),
                    segments: vec![TranscriptSegment {
                        speaker: Speaker::Customer as i32,
                        text: if c % 2 == 0 {
                            "my delivery was late again and the courier was rude".into()
                        } else {
                            "快递又迟到了，太慢了，很失望".into()
                        },
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            ));
        }
        let nps = if late { rng.below(5) } else { 8 + rng.below(3) } as f64;
        out.push(event(
            id("survey"),
            delivered + 20 * MIN,
            by_email,
            "delivery",
            Payload::Survey(SurveyResponse {
                survey_id: "post-delivery".into(),
                answers: vec![SurveyAnswer {
                    kind: MetricKind::Nps as i32,
                    score: Some(nps),
                    scale_min: 0,
                    scale_max: 10,
                    ..Default::default()
                }],
                comment: if late {
                    "late delivery, disappointed".into()
                } else {
                    "fast delivery, great quality".into()
                },
                trigger: Some(SurveyTrigger {
                    r#ref: Some(Ref::OrderId(order_id.clone())),
                }),
                ..Default::default()
            }),
        ));
        if rng.below(3) == 0 {
            out.push(event(
                id("post"),
                delivered + 30 * MIN,
                CustomerIdentity {
                    social_handle_hash: format!("hh-{c}"),
                    ..Default::default()
                },
                "delivery",
                Payload::Social(SocialPost {
                    platform: "weibo".into(),
                    post_id: id("post"),
                    text: "物流太慢了".into(),
                    ..Default::default()
                }),
            ));
        }
    }
    out.sort_by(|a, b| {
        let at = |e: &Event| e.occurred_at.as_ref().map(xoflow_proto::to_unix_millis);
        at(a).cmp(&at(b)).then_with(|| a.event_id.cmp(&b.event_id))
    });
    out
}
