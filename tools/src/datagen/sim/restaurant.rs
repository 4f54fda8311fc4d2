//! The restaurant chain's dine-in journey, one customer-day at a time: a
//! visit (mostly to the customer's own store), sometimes booked online
//! first, a queue, the order and its payment; then a survey right after
//! payment whose score a long queue or the understaffed store's service
//! lowers, and now and then a complaint call or a post.

use xoflow_proto::v1::{ClickAction, OrderStatus, survey_trigger::Ref};

use super::{HOUR, MINUTE, Sim, seg_rate};
use crate::datagen::{
    text::{Polarity, Topic},
    world::{Customer, Tenant, dine_in},
};

impl Sim<'_> {
    pub(super) fn restaurant_day(&mut self, t: &Tenant, c: &Customer, day: i64, fade: f64) {
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
}
