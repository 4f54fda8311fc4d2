//! The generated world: tenants with their journeys, stores in regions,
//! customers with identities spread across channels, and the known problems
//! the data should reveal (one store short of staff at one touchpoint, one
//! region whose deliveries run late, a toy that breaks).

use xoflow_proto::v1::Channel;

use super::SplitMix;

/// A journey touchpoint as the generator attributes events to it.
#[derive(Debug, Clone, Copy)]
pub struct Tp {
    pub journey: &'static str,
    pub stage: &'static str,
    pub touchpoint: &'static str,
    pub channel: Channel,
}

const fn tp(
    journey: &'static str,
    stage: &'static str,
    touchpoint: &'static str,
    channel: Channel,
) -> Tp {
    Tp {
        journey,
        stage,
        touchpoint,
        channel,
    }
}

/// The restaurant chain's dine-in journey (online booking → travel → queue →
/// order → serving → dining → payment → leaving).
pub mod dine_in {
    use super::*;
    pub const BOOKING: Tp = tp("dine-in", "online-booking", "booking-app", Channel::App);
    pub const QUEUE: Tp = tp("dine-in", "queue", "queue-desk", Channel::Store);
    pub const ORDER: Tp = tp("dine-in", "order", "ordering-tablet", Channel::Store);
    pub const SERVING: Tp = tp("dine-in", "serving", "table-service", Channel::Store);
    pub const DINING: Tp = tp("dine-in", "dining", "food", Channel::Store);
    pub const PAYMENT: Tp = tp("dine-in", "payment", "checkout-counter", Channel::Store);
    pub const SOCIAL: Tp = tp("dine-in", "leaving", "social-review", Channel::Social);
    pub const CALL: Tp = tp(
        "dine-in",
        "leaving",
        "complaint-hotline",
        Channel::CallCentre,
    );
}

/// The online purchase journey (browse → cart → checkout → payment →
/// delivery → after-sales).
pub mod online {
    use super::*;
    pub const BROWSE: Tp = tp("online-purchase", "browse", "product-page", Channel::Web);
    pub const CART: Tp = tp("online-purchase", "cart", "cart", Channel::Web);
    pub const CHECKOUT: Tp = tp("online-purchase", "checkout", "checkout-page", Channel::Web);
    pub const PAYMENT: Tp = tp("online-purchase", "payment", "payment", Channel::Web);
    pub const DELIVERY: Tp = tp(
        "online-purchase",
        "delivery",
        "courier-delivery",
        Channel::App,
    );
    pub const SUPPORT: Tp = tp(
        "online-purchase",
        "after-sales",
        "support-call",
        Channel::CallCentre,
    );
    pub const RETURNS: Tp = tp("online-purchase", "after-sales", "returns", Channel::Web);
    pub const SOCIAL: Tp = tp(
        "online-purchase",
        "after-sales",
        "social-mention",
        Channel::Social,
    );
}

/// The early-education subscription journey: a course kit shipped with a
/// toy; a parent calls support when the toy breaks.
pub mod kit {
    use super::*;
    pub const SUBSCRIBE: Tp = tp(
        "education-kit",
        "subscribe",
        "subscription-page",
        Channel::App,
    );
    pub const DELIVERY: Tp = tp("education-kit", "delivery", "kit-delivery", Channel::App);
    pub const TOY: Tp = tp("education-kit", "usage", "toy", Channel::App);
    pub const SUPPORT: Tp = tp(
        "education-kit",
        "support",
        "parent-hotline",
        Channel::CallCentre,
    );
    pub const SOCIAL: Tp = tp(
        "education-kit",
        "usage",
        "parent-community",
        Channel::Social,
    );
}

/// Which journey a tenant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Business {
    Restaurant,
    Online,
    Education,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub id: &'static str,
    pub region: &'static str,
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: &'static str,
    pub business: Business,
    pub stores: Vec<Store>,
    pub customers: usize,
    /// The store and touchpoint with a staffing problem, if any.
    pub problem_store: Option<(&'static str, &'static str)>,
    /// The region whose deliveries run late, if any.
    pub late_region: Option<&'static str>,
    /// Share of texts written in Chinese.
    pub zh_share: f64,
}

/// Customer value segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Vip,
    Regular,
    New,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub email: String,
    pub phone: String,
    pub handle: String,
    pub device: String,
    pub segment: Segment,
    pub store: usize,
    /// Latent propensity to leave, in [0, 1]: lowers activity over the week
    /// and scores, raises complaints.
    pub churn: f64,
    /// Asked not to be contacted: every event of the customer carries the
    /// attribute `do_not_contact = "true"`, and no alert may name them.
    pub do_not_contact: bool,
}

/// The three tenants of the generated world.
pub fn tenants(scale: f64) -> Vec<Tenant> {
    let n = |base: f64| ((base * scale).round() as usize).max(10);
    vec![
        Tenant {
            name: "hotpot-house",
            business: Business::Restaurant,
            stores: vec![
                Store {
                    id: "sz-01",
                    region: "south-china",
                },
                Store {
                    id: "sz-02",
                    region: "south-china",
                },
                Store {
                    id: "sz-03",
                    region: "south-china",
                },
                Store {
                    id: "sh-01",
                    region: "east-china",
                },
                Store {
                    id: "sh-02",
                    region: "east-china",
                },
                Store {
                    id: "bj-01",
                    region: "north-china",
                },
            ],
            customers: n(4_800.0),
            problem_store: Some(("sz-03", dine_in::SERVING.touchpoint)),
            late_region: None,
            zh_share: 0.8,
        },
        Tenant {
            name: "shopmall-online",
            business: Business::Online,
            stores: vec![
                Store {
                    id: "wh-south",
                    region: "south-china",
                },
                Store {
                    id: "wh-east",
                    region: "east-china",
                },
                Store {
                    id: "wh-north",
                    region: "north-china",
                },
            ],
            customers: n(6_000.0),
            problem_store: None,
            late_region: Some("north-china"),
            zh_share: 0.6,
        },
        Tenant {
            name: "little-scholar",
            business: Business::Education,
            stores: vec![
                Store {
                    id: "hub-east",
                    region: "east-china",
                },
                Store {
                    id: "hub-west",
                    region: "west-china",
                },
            ],
            customers: n(1_800.0),
            problem_store: None,
            late_region: None,
            zh_share: 0.7,
        },
    ]
}

/// The customers of one tenant.
pub fn customers(rng: &mut SplitMix, t: &Tenant) -> Vec<Customer> {
    let prefix: String = t.name.split('-').map(|w| &w[..1]).collect();
    (0..t.customers)
        .map(|i| {
            let segment = match rng.below(10) {
                0 => Segment::Vip,
                1..=2 => Segment::New,
                _ => Segment::Regular,
            };
            // Most customers are loyal; a tail is drifting away.
            let churn = if rng.chance(0.12) {
                0.6 + 0.4 * rng.unit()
            } else {
                0.3 * rng.unit()
            };
            Customer {
                id: format!("{prefix}-c{i:05}"),
                email: format!("{prefix}.member{i}@mail.example.com"),
                phone: format!(
                    "+86 139 {:04} {:04}",
                    (i / 10_000) as u64 + 7 * rng.below(10),
                    i % 10_000
                ),
                handle: format!("@{prefix}_fan_{i}"),
                device: format!("dev-{prefix}-{i}-{}", rng.below(1_000_000)),
                segment,
                store: rng.below(t.stores.len() as u64) as usize,
                churn,
                do_not_contact: false,
            }
        })
        .collect()
}
