//! One event of each kind, emitted with what it adds to the ground truth:
//! surveys (NPS, CSAT, CES and a comment of the matching polarity), click
//! sessions, orders with their lifecycle, support calls and social posts.

use xoflow_proto::v1::{
    CallTranscript, ClickAction, ClickEvent, LineItem, MetricKind, Order, OrderStatus, Reactions,
    SocialPost, Speaker, SurveyAnswer, SurveyResponse, SurveyTrigger, TranscriptSegment,
    event::Payload, survey_trigger::Ref,
};

use super::{Ident, Sim, clamp_score};
use crate::datagen::{
    text::{Polarity, Topic},
    world::{Customer, Segment, Store, Tenant, Tp},
};

impl Sim<'_> {
    /// A survey at a moment of truth. `nps` drives the comment's polarity;
    /// CSAT follows NPS; CES is asked after support contacts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn survey(
        &mut self,
        t: &Tenant,
        c: &Customer,
        tp: Tp,
        store: &Store,
        at: i64,
        survey_id: &str,
        nps: i32,
        ces: Option<i32>,
        topic: Topic,
        trigger: Option<Ref>,
    ) {
        if at >= self.end_ms {
            return;
        }
        let csat = clamp_score(1.0 + f64::from(nps) / 2.5 + 0.5 * self.rng.normal(), 1, 5);
        let polarity = match nps {
            0..=6 => Polarity::Negative,
            7..=8 if self.rng.chance(0.5) => Polarity::Neutral,
            _ => Polarity::Positive,
        };
        let comment = self.rng.chance(0.6).then(|| self.text(t, topic, polarity));
        let mut answers = vec![
            answer("likely-to-recommend", MetricKind::Nps, nps, 0, 10),
            answer("satisfaction", MetricKind::Csat, csat, 1, 5),
        ];
        if let Some(ces) = ces {
            answers.push(answer("easy-to-resolve", MetricKind::Ces, ces, 1, 7));
        }
        let how = if self.rng.chance(0.6) {
            Ident::Full
        } else {
            Ident::Email
        };
        let (text, language) = match &comment {
            Some(x) => (x.text.clone(), x.language),
            None => (String::new(), ""),
        };
        let payload = Payload::Survey(SurveyResponse {
            survey_id: survey_id.into(),
            answers,
            comment: text,
            language: language.into(),
            trigger: trigger.map(|r| SurveyTrigger { r#ref: Some(r) }),
        });
        if self.emit(t, c, how, tp, store, at, payload) {
            if let Some(x) = comment {
                self.record_text(x);
            }
            let tt = self.truth.touchpoint(t.name, tp.journey, tp.touchpoint);
            tt.nps.add(nps);
            tt.csat_responses += 1;
            tt.csat_top2 += u64::from(csat >= 4);
            if let Some(ces) = ces {
                tt.ces_responses += 1;
                tt.ces_sum += ces as u64;
                tt.ces_easy += u64::from(ces >= 5);
            }
            self.truth
                .store(t.name, tp.touchpoint, store.id, store.region)
                .nps
                .add(nps);
            let r = self.truth.customer(t.name, &c.id, c.churn);
            r.detractor_answers += u64::from(nps <= 6);
        }
    }

    pub(super) fn nps(&mut self, base: f64, penalty: f64, c: &Customer) -> i32 {
        let vip = if c.segment == Segment::Vip { 0.4 } else { 0.0 };
        clamp_score(
            base - penalty - 3.0 * c.churn + vip + 1.5 * self.rng.normal(),
            0,
            10,
        )
    }

    pub(super) fn clicks(
        &mut self,
        t: &Tenant,
        c: &Customer,
        store: &Store,
        at: i64,
        pages: &[(Tp, &str, ClickAction)],
    ) -> i64 {
        let session = format!("s-{}", self.rng.below(1 << 40));
        let how = if self.rng.chance(0.7) {
            Ident::LoggedIn
        } else {
            Ident::Device
        };
        let mut now = at;
        for (tp, path, action) in pages {
            let duration = 2_000 + self.rng.below(90_000) as i64;
            let payload = Payload::Click(ClickEvent {
                session_id: session.clone(),
                url: format!("https://{}.example.com{path}", t.name),
                path: (*path).into(),
                action: *action as i32,
                referrer: String::new(),
                user_agent: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)".into(),
                duration_ms: duration as u32,
            });
            self.emit(t, c, how, *tp, store, now, payload);
            now += duration;
        }
        now
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn order(
        &mut self,
        t: &Tenant,
        c: &Customer,
        tp: Tp,
        store: &Store,
        at: i64,
        id: &str,
        status: OrderStatus,
        amount: i64,
        promised: Option<i64>,
        delivered: Option<i64>,
    ) {
        let items = 1 + self.rng.below(3) as u32;
        let payload = Payload::Order(Order {
            order_id: id.into(),
            status: status as i32,
            amount_minor: amount,
            currency: "CNY".into(),
            items: vec![LineItem {
                sku: format!("sku-{}", self.rng.below(400)),
                name: "商品".into(),
                quantity: items,
                unit_price_minor: amount / i64::from(items),
            }],
            promised_delivery_at: promised.map(xoflow_proto::from_unix_millis),
            delivered_at: delivered.map(xoflow_proto::from_unix_millis),
        });
        self.emit(t, c, Ident::Full, tp, store, at, payload);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn call(
        &mut self,
        t: &Tenant,
        c: &Customer,
        tp: Tp,
        store: &Store,
        at: i64,
        topic: Topic,
        queue: &str,
    ) -> String {
        let call_id = format!("call-{}", self.rng.below(1 << 40));
        let complaint = self.text(t, topic, Polarity::Negative);
        let zh = complaint.language == "zh";
        let length = 120_000 + self.rng.below(600_000) as i64;
        let agent_line = if zh {
            "非常抱歉给您带来不便，我马上为您处理。"
        } else {
            "I'm sorry about that, let me sort it out for you."
        };
        let payload = Payload::Call(CallTranscript {
            call_id: call_id.clone(),
            agent_id: format!("agent-{:03}", self.rng.below(60)),
            queue: queue.into(),
            started_at: Some(xoflow_proto::from_unix_millis(at)),
            ended_at: Some(xoflow_proto::from_unix_millis(at + length)),
            segments: vec![
                TranscriptSegment {
                    speaker: Speaker::Customer as i32,
                    start_ms: 0,
                    end_ms: 15_000,
                    text: complaint.text.clone(),
                },
                TranscriptSegment {
                    speaker: Speaker::Agent as i32,
                    start_ms: 15_500,
                    end_ms: 24_000,
                    text: agent_line.into(),
                },
            ],
            disposition: if self.rng.chance(0.7) {
                "resolved"
            } else {
                "escalated"
            }
            .into(),
            language: String::new(),
        });
        let how = if self.rng.chance(0.7) {
            Ident::Phone
        } else {
            Ident::Full
        };
        if self.emit(t, c, how, tp, store, at + length, payload) {
            self.record_text(complaint);
            self.truth.customer(t.name, &c.id, c.churn).support_calls += 1;
        }
        call_id
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn post(
        &mut self,
        t: &Tenant,
        c: &Customer,
        tp: Tp,
        store: &Store,
        at: i64,
        topic: Topic,
        polarity: Polarity,
    ) {
        let post = self.text(t, topic, polarity);
        let platform = if post.language == "zh" { "weibo" } else { "x" };
        let post_id = format!("p{}", self.rng.below(1 << 40));
        let payload = Payload::Social(SocialPost {
            platform: platform.into(),
            url: format!("https://{platform}.example.com/{post_id}"),
            post_id,
            author_handle: c.handle.clone(),
            text: post.text.clone(),
            reply_to: String::new(),
            reactions: Some(Reactions {
                likes: self.rng.below(300) as u32,
                shares: self.rng.below(40) as u32,
                comments: self.rng.below(60) as u32,
            }),
            language: String::new(),
        });
        if self.emit(t, c, Ident::Handle, tp, store, at, payload) {
            self.record_text(post);
            if polarity == Polarity::Negative {
                self.truth.customer(t.name, &c.id, c.churn).negative_posts += 1;
            }
        }
    }
}

/// A scored answer on its native scale, without free text.
fn answer(question: &str, kind: MetricKind, score: i32, min: i32, max: i32) -> SurveyAnswer {
    SurveyAnswer {
        question_id: question.into(),
        kind: kind as i32,
        score: Some(f64::from(score)),
        scale_min: min,
        scale_max: max,
        text: String::new(),
    }
}
