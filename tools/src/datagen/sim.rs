//! The simulation: customers living through their journeys day by day.
//!
//! Causes come first and scores follow from them: a late delivery, the
//! understaffed store's table service, a long queue, a broken toy or a
//! customer already drifting away lower the NPS, CSAT and CES that the
//! surveys fired at the moments of truth record, and the comments, calls and
//! posts are written with the matching sentiment and topic.

use xoflow_proto::v1::{
    CallTranscript, ClickAction, ClickEvent, CustomerIdentity, Event, LineItem, Location,
    MetricKind, Order, OrderStatus, Reactions, SocialPost, Speaker, SurveyAnswer, SurveyResponse,
    SurveyTrigger, Touchpoint, TranscriptSegment, event::Payload, survey_trigger::Ref,
};

use super::{
    GenConfig, Generated, SplitMix,
    text::{self, Polarity, Text, Topic},
    truth::TruthBuilder,
    world::{self, Business, Customer, Segment, Store, Tenant, Tp, dine_in, kit, online},
};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Who an event is attributed to, as the source would know them.
#[derive(Clone, Copy)]
enum Ident {
    /// Strong id plus e-mail and phone (orders, CRM-linked surveys).
    Full,
    /// Strong id plus device (logged-in clicks).
    LoggedIn,
    /// Device only (anonymous clicks).
    Device,
    /// E-mail only (survey links sent by e-mail).
    Email,
    /// Phone only (caller id).
    Phone,
    /// Social handle only.
    Handle,
}

struct Sim<'a> {
    rng: SplitMix,
    cfg: &'a GenConfig,
    end_ms: i64,
    events: Vec<(i64, Event)>,
    truth: TruthBuilder,
    seq: u64,
}

/// Generates the data and its ground truth.
pub fn generate(cfg: &GenConfig) -> Generated {
    let mut sim = Sim {
        rng: SplitMix::new(cfg.seed),
        cfg,
        end_ms: cfg.start_ms + i64::from(cfg.days) * DAY,
        events: Vec::new(),
        truth: TruthBuilder::default(),
        seq: 0,
    };
    sim.truth.truth.seed = cfg.seed;
    sim.truth.truth.start_ms = cfg.start_ms;
    sim.truth.truth.days = cfg.days;
    for tenant in world::tenants(cfg.scale) {
        if let Some((store, tp)) = tenant.problem_store {
            sim.truth.truth.problems.push(format!(
                "{}: store {store} is short of staff at touchpoint {tp}",
                tenant.name
            ));
        }
        if let Some(region) = tenant.late_region {
            sim.truth
                .truth
                .problems
                .push(format!("{}: deliveries in {region} run late", tenant.name));
        }
        let customers = world::customers(&mut sim.rng, &tenant);
        for c in &customers {
            for day in 0..cfg.days {
                let day_start = cfg.start_ms + i64::from(day) * DAY;
                // Drifting customers come less often as the week goes on.
                let fade = 1.0 - c.churn * f64::from(day) / f64::from(cfg.days.max(1));
                match tenant.business {
                    Business::Restaurant => sim.restaurant_day(&tenant, c, day_start, fade),
                    Business::Online => sim.online_day(&tenant, c, day_start, fade),
                    Business::Education => sim.education_day(&tenant, c, day_start, fade),
                }
            }
        }
    }
    sim.corrupt();
    sim.events
        .sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.event_id.cmp(&b.1.event_id)));
    let events: Vec<Event> = sim.events.into_iter().map(|(_, e)| e).collect();
    let mut truth = sim.truth.finish();
    truth.planted_pii.sort();
    truth.planted_pii.dedup();
    Generated { events, truth }
}

fn seg_rate(c: &Customer) -> f64 {
    match c.segment {
        Segment::Vip => 1.6,
        Segment::Regular => 1.0,
        Segment::New => 0.6,
    }
}

fn clamp_score(x: f64, min: i32, max: i32) -> i32 {
    (x.round() as i32).clamp(min, max)
}

impl Sim<'_> {
    fn next_id(&mut self, tenant: &Tenant) -> String {
        self.seq += 1;
        let prefix: String = tenant.name.split('-').map(|w| &w[..1]).collect();
        format!("{prefix}-{:08}", self.seq)
    }

    fn identity(&self, c: &Customer, how: Ident) -> CustomerIdentity {
        let mut id = CustomerIdentity::default();
        match how {
            Ident::Full => {
                id.customer_id = c.id.clone();
                id.email = c.email.clone();
                id.phone = c.phone.clone();
            }
            Ident::LoggedIn => {
                id.customer_id = c.id.clone();
                id.device_id = c.device.clone();
            }
            Ident::Device => id.device_id = c.device.clone(),
            Ident::Email => id.email = c.email.clone(),
            Ident::Phone => id.phone = c.phone.clone(),
            Ident::Handle => id.social_handle = c.handle.clone(),
        }
        id
    }

    /// Records an event if it happens within the span.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        t: &Tenant,
        c: &Customer,
        how: Ident,
        tp: Tp,
        store: &Store,
        at: i64,
        payload: Payload,
    ) -> bool {
        if at >= self.end_ms {
            return false;
        }
        let event = Event {
            event_id: self.next_id(t),
            tenant: t.name.into(),
            source: source_of(&payload).into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(at)),
            received_at: None,
            customer: Some(self.identity(c, how)),
            touchpoint: Some(Touchpoint {
                journey: tp.journey.into(),
                stage: tp.stage.into(),
                touchpoint: tp.touchpoint.into(),
                channel: tp.channel as i32,
            }),
            location: Some(Location {
                store_id: store.id.into(),
                region: store.region.into(),
            }),
            attributes: Default::default(),
            payload: Some(payload),
        };
        let kind = event.kind().map(|k| k.as_str()).unwrap_or("none");
        *self.truth.truth.by_kind.entry(kind.into()).or_default() += 1;
        *self.truth.truth.by_tenant.entry(t.name.into()).or_default() += 1;
        self.truth.truth.events += 1;
        self.events.push((at, event));
        true
    }

    fn text(&mut self, t: &Tenant, topic: Topic, polarity: Polarity) -> Text {
        text::write(&mut self.rng, topic, polarity, t.zh_share, 0.08)
    }

    /// Records what an emitted text carries: planted personal data, and its
    /// topic when it was written negative.
    fn record_text(&mut self, txt: Text) {
        if let (Polarity::Negative, Some(topic)) = (txt.polarity, txt.topic) {
            *self
                .truth
                .truth
                .negative_topics
                .entry(topic.as_str().into())
                .or_default() += 1;
        }
        self.truth.truth.planted_pii.extend(txt.planted);
    }

    /// A survey at a moment of truth. `nps` drives the comment's polarity;
    /// CSAT follows NPS; CES is asked after support contacts.
    #[allow(clippy::too_many_arguments)]
    fn survey(
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
            SurveyAnswer {
                question_id: "likely-to-recommend".into(),
                kind: MetricKind::Nps as i32,
                score: Some(f64::from(nps)),
                scale_min: 0,
                scale_max: 10,
                text: String::new(),
            },
            SurveyAnswer {
                question_id: "satisfaction".into(),
                kind: MetricKind::Csat as i32,
                score: Some(f64::from(csat)),
                scale_min: 1,
                scale_max: 5,
                text: String::new(),
            },
        ];
        if let Some(ces) = ces {
            answers.push(SurveyAnswer {
                question_id: "easy-to-resolve".into(),
                kind: MetricKind::Ces as i32,
                score: Some(f64::from(ces)),
                scale_min: 1,
                scale_max: 7,
                text: String::new(),
            });
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

    fn nps(&mut self, base: f64, penalty: f64, c: &Customer) -> i32 {
        let vip = if c.segment == Segment::Vip { 0.4 } else { 0.0 };
        clamp_score(
            base - penalty - 3.0 * c.churn + vip + 1.5 * self.rng.normal(),
            0,
            10,
        )
    }

    fn clicks(
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
    fn order(
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
    fn call(
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
    fn post(
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

    fn restaurant_day(&mut self, t: &Tenant, c: &Customer, day: i64, fade: f64) {
        if !self.rng.chance(0.22 * seg_rate(c) * fade) {
            return;
        }
        let store = &t.stores[if self.rng.chance(0.8) {
            c.store
        } else {
            self.rng.below(t.stores.len() as u64) as usize
        }];
        let meal = if self.rng.chance(0.4) {
            11 * HOUR
        } else {
            17 * HOUR
        };
        let mut at = day + meal + self.rng.below(3 * HOUR as u64) as i64;
        if self.rng.chance(0.5) {
            at = self.clicks(
                t,
                c,
                store,
                at - 2 * HOUR,
                &[
                    (dine_in::BOOKING, "/booking", ClickAction::View),
                    (dine_in::BOOKING, "/booking/slots", ClickAction::Click),
                    (dine_in::BOOKING, "/booking/confirm", ClickAction::Checkout),
                ],
            ) + 2 * HOUR;
        }
        let long_queue = self.rng.chance(0.2);
        let wait = if long_queue { 50 * MINUTE } else { 10 * MINUTE };
        at += wait;
        let order_id = format!("{}-{}", store.id, self.rng.below(1 << 40));
        let amount = 8_000 + self.rng.below(40_000) as i64;
        self.order(
            t,
            c,
            dine_in::ORDER,
            store,
            at,
            &order_id,
            OrderStatus::Placed,
            amount,
            None,
            None,
        );
        at += 70 * MINUTE;
        self.order(
            t,
            c,
            dine_in::PAYMENT,
            store,
            at,
            &order_id,
            OrderStatus::Paid,
            amount,
            None,
            None,
        );

        let understaffed = t.problem_store.is_some_and(|(s, _)| s == store.id);
        // The moment of truth: right after payment, one touchpoint asked.
        if self.rng.chance(0.45) {
            let (tp, survey_id, topic, penalty) = match self.rng.below(3) {
                0 => (
                    dine_in::SERVING,
                    "dinein-service",
                    Topic::Staff,
                    if understaffed { 3.5 } else { 0.0 },
                ),
                1 => (
                    dine_in::QUEUE,
                    "dinein-queue",
                    Topic::Waiting,
                    if long_queue { 2.5 } else { 0.0 },
                ),
                _ => (dine_in::DINING, "dinein-food", Topic::Food, 0.0),
            };
            let nps = self.nps(8.7, penalty, c);
            self.survey(
                t,
                c,
                tp,
                store,
                at + 5 * MINUTE,
                survey_id,
                nps,
                None,
                topic,
                Some(Ref::OrderId(order_id.clone())),
            );
            if nps <= 3 && self.rng.chance(0.3) {
                self.call(
                    t,
                    c,
                    dine_in::CALL,
                    store,
                    at + 3 * HOUR,
                    topic,
                    "store-complaints",
                );
            }
            if self.rng.chance(0.08 + 0.15 * f64::from(u8::from(nps <= 4))) {
                let polarity = if nps <= 6 {
                    Polarity::Negative
                } else {
                    Polarity::Positive
                };
                self.post(t, c, dine_in::SOCIAL, store, at + 2 * HOUR, topic, polarity);
            }
        }
    }

    fn online_day(&mut self, t: &Tenant, c: &Customer, day: i64, fade: f64) {
        if !self.rng.chance(0.55 * seg_rate(c) * fade) {
            return;
        }
        let store = &t.stores[c.store];
        let mut at = day + 8 * HOUR + self.rng.below(14 * HOUR as u64) as i64;
        let views = 1 + self.rng.below(4) as usize;
        let mut pages: Vec<(Tp, &str, ClickAction)> = (0..views)
            .map(|_| (online::BROWSE, "/p/product", ClickAction::View))
            .collect();
        if self.rng.chance(0.3) {
            pages.push((online::BROWSE, "/search", ClickAction::Search));
        }
        let buys = self.rng.chance(0.35);
        if !buys {
            self.clicks(t, c, store, at, &pages);
            return;
        }
        pages.push((online::CART, "/cart", ClickAction::AddToCart));
        pages.push((online::CHECKOUT, "/checkout", ClickAction::Checkout));
        let error = self.rng.chance(0.12);
        if error {
            pages.push((online::CHECKOUT, "/checkout/payment", ClickAction::Error));
            if self.rng.chance(0.6) {
                // Abandoned after the error page.
                self.clicks(t, c, store, at, &pages);
                return;
            }
        }
        pages.push((online::PAYMENT, "/checkout/done", ClickAction::Purchase));
        at = self.clicks(t, c, store, at, &pages);

        let order_id = format!("ord-{}", self.rng.below(1 << 40));
        let amount = 3_000 + self.rng.below(120_000) as i64;
        let promised = at + 3 * DAY;
        self.order(
            t,
            c,
            online::PAYMENT,
            store,
            at,
            &order_id,
            OrderStatus::Placed,
            amount,
            Some(promised),
            None,
        );
        self.order(
            t,
            c,
            online::PAYMENT,
            store,
            at + MINUTE,
            &order_id,
            OrderStatus::Paid,
            amount,
            Some(promised),
            None,
        );
        if self.rng.chance(0.04) {
            self.order(
                t,
                c,
                online::PAYMENT,
                store,
                at + 3 * HOUR,
                &order_id,
                OrderStatus::Cancelled,
                amount,
                Some(promised),
                None,
            );
            return;
        }
        let shipped = at + 20 * HOUR;
        self.order(
            t,
            c,
            online::DELIVERY,
            store,
            shipped,
            &order_id,
            OrderStatus::Shipped,
            amount,
            Some(promised),
            None,
        );
        let late_p = if t.late_region == Some(store.region) {
            0.45
        } else {
            0.1
        };
        let late = self.rng.chance(late_p);
        let delivered = if late {
            promised + DAY + self.rng.below(2 * DAY as u64) as i64
        } else {
            shipped + DAY + self.rng.below(DAY as u64) as i64
        };
        self.order(
            t,
            c,
            online::DELIVERY,
            store,
            delivered,
            &order_id,
            OrderStatus::Delivered,
            amount,
            Some(promised),
            Some(delivered),
        );

        let mut ces = None;
        if (late || error) && self.rng.chance(0.5) {
            self.call(
                t,
                c,
                online::SUPPORT,
                store,
                delivered + 2 * HOUR,
                Topic::Delivery,
                "after-sales",
            );
            ces = Some(clamp_score(
                5.2 - 2.0 * c.churn + 1.2 * self.rng.normal(),
                1,
                7,
            ));
        }
        if self.rng.chance(0.4) {
            let nps = self.nps(8.6, if late { 4.5 } else { 0.0 }, c);
            let topic = if late {
                Topic::Delivery
            } else if error {
                Topic::App
            } else if self.rng.chance(0.5) {
                Topic::Quality
            } else {
                Topic::Price
            };
            self.survey(
                t,
                c,
                online::DELIVERY,
                store,
                delivered + 4 * HOUR,
                "post-delivery",
                nps,
                None,
                topic,
                Some(Ref::OrderId(order_id.clone())),
            );
            if let Some(ces) = ces {
                let nps = self.nps(7.5, if ces <= 3 { 3.0 } else { 0.0 }, c);
                self.survey(
                    t,
                    c,
                    online::SUPPORT,
                    store,
                    delivered + 5 * HOUR,
                    "post-support",
                    nps,
                    Some(ces),
                    Topic::Delivery,
                    None,
                );
            }
            if nps <= 5 && self.rng.chance(0.25) {
                self.post(
                    t,
                    c,
                    online::SOCIAL,
                    store,
                    delivered + 6 * HOUR,
                    topic,
                    Polarity::Negative,
                );
            }
        }
        if self.rng.chance(0.05 + 0.1 * c.churn) {
            self.order(
                t,
                c,
                online::RETURNS,
                store,
                delivered + 2 * DAY,
                &order_id,
                OrderStatus::Returned,
                amount,
                Some(promised),
                Some(delivered),
            );
        }
    }

    fn education_day(&mut self, t: &Tenant, c: &Customer, day: i64, fade: f64) {
        let store = &t.stores[c.store];
        // Parents open the app most days; kits ship once in the span.
        if self.rng.chance(0.5 * fade) {
            let at = day + 19 * HOUR + self.rng.below(3 * HOUR as u64) as i64;
            self.clicks(
                t,
                c,
                store,
                at,
                &[
                    (kit::SUBSCRIBE, "/courses", ClickAction::View),
                    (kit::TOY, "/courses/lesson", ClickAction::View),
                ],
            );
        }
        let ship_day = (c.id.len() as u64 + self.cfg.seed) % 3;
        if (day - self.cfg.start_ms) / DAY != ship_day as i64 {
            return;
        }
        let at = day + 10 * HOUR;
        let order_id = format!("kit-{}", self.rng.below(1 << 40));
        let amount = 39_900;
        let promised = at + 2 * DAY;
        self.order(
            t,
            c,
            kit::SUBSCRIBE,
            store,
            at,
            &order_id,
            OrderStatus::Paid,
            amount,
            Some(promised),
            None,
        );
        let delivered = at + DAY + self.rng.below(2 * DAY as u64) as i64;
        self.order(
            t,
            c,
            kit::DELIVERY,
            store,
            delivered,
            &order_id,
            OrderStatus::Delivered,
            amount,
            Some(promised),
            Some(delivered),
        );
        let broken = self.rng.chance(0.1);
        let penalty = if broken { 3.5 } else { 0.0 };
        if broken {
            let call_at = delivered + DAY + self.rng.below(DAY as u64) as i64;
            let call_id = self.call(
                t,
                c,
                kit::SUPPORT,
                store,
                call_at,
                Topic::Quality,
                "quality",
            );
            let ces = clamp_score(4.5 - 2.0 * c.churn + 1.2 * self.rng.normal(), 1, 7);
            let nps = self.nps(8.6, penalty, c);
            self.survey(
                t,
                c,
                kit::TOY,
                store,
                call_at + HOUR,
                "toy-support",
                nps,
                Some(ces),
                Topic::Quality,
                Some(Ref::CallId(call_id)),
            );
            if self.rng.chance(0.2) {
                self.post(
                    t,
                    c,
                    kit::SOCIAL,
                    store,
                    call_at + 3 * HOUR,
                    Topic::Quality,
                    Polarity::Negative,
                );
            }
        } else if self.rng.chance(0.5) {
            let nps = self.nps(8.8, 0.0, c);
            self.survey(
                t,
                c,
                kit::DELIVERY,
                store,
                delivered + 6 * HOUR,
                "kit-arrival",
                nps,
                None,
                Topic::Quality,
                Some(Ref::OrderId(order_id)),
            );
        }
    }

    /// Appends malformed copies of some events, each with the reason code
    /// ingest must give it.
    fn corrupt(&mut self) {
        let n = ((self.events.len() as f64) * self.cfg.invalid_share).round() as usize;
        for i in 0..n {
            let idx = self.rng.below(self.events.len() as u64) as usize;
            let (at, mut e) = self.events[idx].clone();
            e.event_id = format!("bad-{:06}", i);
            let reason = match (i % 5, e.payload.as_mut()) {
                (0, _) => {
                    e.tenant.clear();
                    "MISSING"
                }
                (1, _) => {
                    // Far in the future: a device clock gone wrong.
                    e.occurred_at = Some(xoflow_proto::from_unix_millis(4_102_444_800_000));
                    "OUT_OF_RANGE"
                }
                (2, Some(Payload::Survey(s))) if !s.answers.is_empty() => {
                    s.answers[0].score = Some(11.0);
                    "OUT_OF_RANGE"
                }
                (3, Some(Payload::Order(o))) => {
                    o.currency = "rmb".into();
                    "INVALID"
                }
                (_, Some(Payload::Click(c))) => {
                    c.action = ClickAction::Unspecified as i32;
                    "MISSING"
                }
                _ => {
                    e.payload = None;
                    "MISSING"
                }
            };
            *self.truth.truth.invalid.entry(reason.into()).or_default() += 1;
            self.events.push((at, e));
        }
    }
}

fn source_of(p: &Payload) -> &'static str {
    match p {
        Payload::Survey(_) => "survey-tool",
        Payload::Call(_) => "call-centre-stt",
        Payload::Social(_) => "social-listening",
        Payload::Order(_) => "order-system",
        Payload::Click(_) => "web-analytics",
    }
}
