//! The education-kit subscription's journey, one customer-day at a time:
//! parents in the app most days, a kit shipped once in the span, broken
//! toys that lead to calls and low scores.

use xoflow_proto::v1::{ClickAction, OrderStatus, survey_trigger::Ref};

use super::{DAY, HOUR, Sim, clamp_score};
use crate::datagen::{
    text::{Polarity, Topic},
    world::{Customer, Tenant, kit},
};

impl Sim<'_> {
    pub(super) fn education_day(&mut self, t: &Tenant, c: &Customer, day: i64, fade: f64) {
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
}
