//! The online shop's journey, one customer-day at a time: browsing sessions
//! (most end without buying; some checkouts hit an error page and are
//! abandoned), orders placed and paid with a promised date (a few then
//! cancelled), deliveries that run late in one region, the support calls
//! and surveys that follow, and returns.

use xoflow_proto::v1::{ClickAction, OrderStatus, survey_trigger::Ref};

use super::{DAY, HOUR, MINUTE, Sim, clamp_score, seg_rate};
use crate::datagen::{
    text::{Polarity, Topic},
    world::{Customer, Tenant, Tp, online},
};

impl Sim<'_> {
    pub(super) fn online_day(&mut self, t: &Tenant, c: &Customer, day: i64, fade: f64) {
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
}
