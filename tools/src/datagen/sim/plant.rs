//! Customers planted for the closed loop, after the simulated ones and with
//! a PRNG of their own (so the simulated data stays what it was):
//!
//! - **Silent after a complaint** (online shop and education kit): three
//!   orders twenty hours apart from the first hour of the span, a detractor
//!   answer about the last one, then no order again, for four or more of
//!   their usual gaps as enrich measures them (at least a day each) before
//!   the span ends. Planted only when the span is long enough (six days).
//! - **A regular complainer** (restaurant): table-service detractor answers
//!   at the understaffed store on days 1, 2 and 5: the quiet period holds
//!   the second back.
//! - **Do not contact** (every tenant): `contact_consent = WITHDRAWN` on
//!   every event, and answers that would otherwise alert: a
//!   detractor at the understaffed store's table service; a late parcel
//!   answered with a detractor score by a valuable customer who then goes
//!   silent; a broken toy.

use xoflow_proto::v1::{OrderStatus, survey_trigger::Ref};

use super::{DAY, HOUR, MINUTE, Sim};
use crate::datagen::{
    SplitMix,
    alerts::Planted,
    text::Topic,
    world::{Business, Customer, Segment, Tenant, dine_in, kit, online},
};

/// Silent customers planted per online tenant.
const SILENT: usize = 4;
/// Customers who opted out, per tenant.
const DO_NOT_CONTACT: usize = 3;
/// The planted customers' rhythm between orders.
const RHYTHM: i64 = 20 * HOUR;
/// Silence before the span ends, in enrich's gaps (at least a day each).
const SILENT_GAPS: i64 = 4;

impl Sim<'_> {
    /// Plants the closed loop's customers of every tenant; returns who they
    /// are: (silent after a complaint, asked not to be contacted).
    pub(super) fn plant(&mut self, tenants: &[Tenant]) -> (Vec<Planted>, Vec<Planted>) {
        let main = std::mem::replace(
            &mut self.rng,
            SplitMix::new(self.cfg.seed ^ 0x00c1_05ed_100b_0001),
        );
        let mut silent = Vec::new();
        let mut opted_out = Vec::new();
        for t in tenants {
            let prefix: String = t.name.split('-').map(|w| &w[..1]).collect();
            let online = matches!(t.business, Business::Online | Business::Education);
            let last_order = self.cfg.start_ms + HOUR + 2 * RHYTHM + 20 * MINUTE;
            if online && last_order + SILENT_GAPS * RHYTHM.max(DAY) <= self.end_ms {
                for i in 0..SILENT {
                    let c = planted(&prefix, "quiet", i, t, 0.9, false);
                    self.silent_customer(t, &c, false);
                    silent.push(Planted {
                        tenant: t.name.into(),
                        customer_id: c.id.clone(),
                        story: "three orders 20 hours apart, a detractor answer, then silence"
                            .into(),
                    });
                }
            }
            if t.business == Business::Restaurant {
                let c = planted(&prefix, "regular", 0, t, 0.7, false);
                self.unhappy_guest(t, &c, &[1, 2, 5]);
            }
            for i in 0..DO_NOT_CONTACT {
                // Unhappy, and (online) gone quiet: drifting away.
                let churn = if t.business == Business::Restaurant {
                    0.7
                } else {
                    0.9
                };
                let c = planted(&prefix, "optout", i, t, churn, true);
                let story = match t.business {
                    Business::Restaurant => {
                        self.unhappy_guest(t, &c, &[1, 2]);
                        "table-service detractor twice at the understaffed store"
                    }
                    Business::Online => {
                        self.silent_customer(t, &c, true);
                        "valuable, a parcel a day late answered as a detractor, then silence"
                    }
                    Business::Education => {
                        self.silent_customer(t, &c, true);
                        "a broken toy answered as a detractor, then silence"
                    }
                };
                opted_out.push(Planted {
                    tenant: t.name.into(),
                    customer_id: c.id.clone(),
                    story: story.into(),
                });
            }
        }
        self.rng = main;
        (silent, opted_out)
    }

    /// Three orders `RHYTHM` apart, the first within the span's first
    /// hours, a detractor answer about the last one (for an opted-out
    /// customer: about the first, delivered late or with a broken toy),
    /// then no order again.
    fn silent_customer(&mut self, t: &Tenant, c: &Customer, unhappy_first: bool) {
        let store = &t.stores[c.store];
        let start = self.cfg.start_ms + HOUR;
        for k in 0..3 {
            let at = start + k * RHYTHM + self.rng.below(20 * MINUTE as u64) as i64;
            let order_id = format!("{}-{k}", c.id);
            let amount = if c.do_not_contact {
                80_000
            } else {
                40_000 + self.rng.below(30_000) as i64
            };
            let late = unhappy_first && k == 0;
            let answered = if unhappy_first { k == 0 } else { k == 2 };
            match t.business {
                Business::Online => {
                    let promised = at + 3 * DAY;
                    let delivered = if late {
                        promised + DAY + 2 * HOUR
                    } else {
                        at + 44 * HOUR
                    };
                    let steps = [
                        (online::PAYMENT, at, OrderStatus::Placed, None),
                        (online::PAYMENT, at + MINUTE, OrderStatus::Paid, None),
                        (online::DELIVERY, at + 20 * HOUR, OrderStatus::Shipped, None),
                        (
                            online::DELIVERY,
                            delivered,
                            OrderStatus::Delivered,
                            Some(delivered),
                        ),
                    ];
                    for (tp, when, status, d) in steps {
                        self.order(
                            t,
                            c,
                            tp,
                            store,
                            when,
                            &order_id,
                            status,
                            amount,
                            Some(promised),
                            d,
                        );
                    }
                    if answered {
                        let topic = if late {
                            Topic::Delivery
                        } else {
                            Topic::Quality
                        };
                        self.survey(
                            t,
                            c,
                            online::DELIVERY,
                            store,
                            delivered + 4 * HOUR,
                            "post-delivery",
                            2,
                            None,
                            topic,
                            Some(Ref::OrderId(order_id.clone())),
                        );
                    }
                }
                Business::Education | Business::Restaurant => {
                    let promised = at + 2 * DAY;
                    let delivered = at + 30 * HOUR;
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
                    if answered && unhappy_first {
                        // The toy broke: a call, then a detractor answer.
                        let call_at = delivered + 6 * HOUR;
                        let call_id = self.call(
                            t,
                            c,
                            kit::SUPPORT,
                            store,
                            call_at,
                            Topic::Quality,
                            "quality",
                        );
                        self.survey(
                            t,
                            c,
                            kit::TOY,
                            store,
                            call_at + HOUR,
                            "toy-support",
                            1,
                            Some(2),
                            Topic::Quality,
                            Some(Ref::CallId(call_id)),
                        );
                    } else if answered {
                        self.survey(
                            t,
                            c,
                            kit::DELIVERY,
                            store,
                            delivered + 6 * HOUR,
                            "kit-arrival",
                            2,
                            None,
                            Topic::Quality,
                            Some(Ref::OrderId(order_id.clone())),
                        );
                    }
                }
            }
        }
    }

    /// Dinners at the understaffed store on `days` of the span, each
    /// answered with a detractor score for its table service.
    fn unhappy_guest(&mut self, t: &Tenant, c: &Customer, days: &[i64]) {
        let store = &t.stores[c.store];
        for &day in days {
            let at =
                self.cfg.start_ms + day * DAY + 18 * HOUR + self.rng.below(2 * HOUR as u64) as i64;
            let order_id = format!("{}-{}", store.id, c.id);
            let order_id = format!("{order_id}-{day}");
            let amount = 70_000;
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
            self.order(
                t,
                c,
                dine_in::PAYMENT,
                store,
                at + 70 * MINUTE,
                &order_id,
                OrderStatus::Paid,
                amount,
                None,
                None,
            );
            self.survey(
                t,
                c,
                dine_in::SERVING,
                store,
                at + 75 * MINUTE,
                "dinein-service",
                2,
                None,
                Topic::Staff,
                Some(Ref::OrderId(order_id)),
            );
        }
    }
}

/// A planted customer: its own id series (`<prefix>-<kind><n>`), so it
/// never collides with a simulated one, at the tenant's problem store or
/// late region when it has one.
fn planted(
    prefix: &str,
    kind: &str,
    i: usize,
    t: &Tenant,
    churn: f64,
    do_not_contact: bool,
) -> Customer {
    let wanted = if do_not_contact || kind == "regular" {
        t.problem_store
            .map(|(s, _)| s)
            .or(t.late_region)
            .unwrap_or("")
    } else {
        ""
    };
    let store = t
        .stores
        .iter()
        .position(|s| s.id == wanted || s.region == wanted)
        .unwrap_or(0);
    let n = match kind {
        "optout" => 100 + i,
        "quiet" => 200 + i,
        _ => 300 + i,
    };
    Customer {
        id: format!("{prefix}-{kind}{i:02}"),
        email: format!("{prefix}.{kind}{i}@mail.example.com"),
        phone: format!("+86 138 {n:04} {:04}", i + 1),
        handle: format!("@{prefix}_{kind}_{i}"),
        device: format!("dev-{prefix}-{kind}-{i}"),
        segment: Segment::Regular,
        store,
        churn,
        do_not_contact,
    }
}
