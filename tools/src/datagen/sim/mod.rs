//! The simulation: customers living through their journeys day by day.
//!
//! Causes come first and scores follow from them: a late delivery, the
//! understaffed store's table service, a long queue, a broken toy or a
//! customer already drifting away lower the NPS, CSAT and CES that the
//! surveys fired at the moments of truth record, and the comments, calls and
//! posts are written with the matching sentiment and topic.
//!
//! One module per part: this one holds the simulation's state, who an
//! event is attributed to, and the malformed copies; [`events`] emits one
//! event of each kind (survey, clicks, order, call, post) with its truth;
//! [`restaurant`], [`online`] and [`education`] are the three tenants'
//! journeys, one customer-day at a time; [`plant`] adds the customers the
//! closed loop's checks need (silent after a complaint, opted out).

use xoflow_proto::v1::{
    ClickAction, CustomerIdentity, Event, Location, Touchpoint, event::Payload,
};

use super::{
    GenConfig, Generated, SplitMix, alerts,
    text::{self, Polarity, Text, Topic},
    truth::TruthBuilder,
    world::{self, Business, Customer, Segment, Store, Tenant, Tp},
};

mod education;
mod events;
mod online;
mod plant;
mod restaurant;

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
    /// Malformed copies, apart from the valid events until the end.
    corrupted: Vec<(i64, Event)>,
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
        corrupted: Vec::new(),
        truth: TruthBuilder::default(),
        seq: 0,
    };
    sim.truth.truth.seed = cfg.seed;
    sim.truth.truth.start_ms = cfg.start_ms;
    sim.truth.truth.days = cfg.days;
    let tenants = world::tenants(cfg.scale);
    for tenant in &tenants {
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
        let customers = world::customers(&mut sim.rng, tenant);
        for c in &customers {
            for day in 0..cfg.days {
                let day_start = cfg.start_ms + i64::from(day) * DAY;
                // Drifting customers come less often as the week goes on.
                let fade = 1.0 - c.churn * f64::from(day) / f64::from(cfg.days.max(1));
                match tenant.business {
                    Business::Restaurant => sim.restaurant_day(tenant, c, day_start, fade),
                    Business::Online => sim.online_day(tenant, c, day_start, fade),
                    Business::Education => sim.education_day(tenant, c, day_start, fade),
                }
            }
        }
    }
    sim.corrupt();
    let (silent, opted_out) = sim.plant(&tenants);
    // The join's windows and bounds as shipped; the lateness plays no part.
    let join = xoflow_enrich::join::JoinConfig::new(std::time::Duration::from_secs(2));
    let mut expected = alerts::expected(
        sim.events.iter().map(|(_, e)| e),
        &alerts::DemoConfig::embedded(),
        &join,
    );
    expected.planted_silent = silent;
    expected.do_not_contact = opted_out;
    sim.truth.truth.alerts = expected;
    let corrupted = std::mem::take(&mut sim.corrupted);
    sim.events.extend(corrupted);
    sim.events
        .sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.event_id.cmp(&b.1.event_id)));
    let mut events: Vec<Event> = sim.events.into_iter().map(|(_, e)| e).collect();
    cfg.order.arrange(&mut events, cfg.seed);
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
    /// The seed is part of every id: two loads generated with different
    /// seeds never collide in the store (ingest deduplicates by id), while
    /// the same seed gives the same ids, so importing a load again stays
    /// idempotent.
    fn next_id(&mut self, tenant: &Tenant) -> String {
        self.seq += 1;
        let prefix: String = tenant.name.split('-').map(|w| &w[..1]).collect();
        format!("{prefix}-{:x}-{:08}", self.cfg.seed, self.seq)
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
            contact_consent: if c.do_not_contact {
                xoflow_proto::v1::ContactConsent::Withdrawn as i32
            } else {
                0
            },
            // Stamped by ingest from the tenant's time zone.
            utc_offset_seconds: 0,
            payload: Some(payload),
        };
        let kind = event.kind().map(|k| k.as_str()).unwrap_or("none");
        *self.truth.truth.by_kind.entry(kind.into()).or_default() += 1;
        if let Some(Payload::Survey(s)) = &event.payload {
            self.truth.truth.survey_answers += s.answers.len() as u64;
        }
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

    /// Appends malformed copies of some events, each with the reason code
    /// ingest must give it.
    fn corrupt(&mut self) {
        let valid = self.events.len();
        let n = ((valid as f64) * self.cfg.invalid_share).round() as usize;
        for i in 0..n {
            // A copy of a valid event only: a copy of a copy already
            // corrupted would carry two problems, and ingest names the first
            // it finds, not necessarily the one planted last.
            let idx = self.rng.below(valid as u64) as usize;
            let (at, mut e) = self.events[idx].clone();
            e.event_id = format!("bad-{:x}-{:06}", self.cfg.seed, i);
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
            self.corrupted.push((at, e));
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
