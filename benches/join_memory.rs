//! Memory the enrich join keeps per customer, measured the way the
//! pipeline bench's twice-the-peak phase feeds it: the generator's two days
//! at scale 1, over and over, each pass a generation of customers of its
//! own (`xoflow::bench::new_customers`), events normalised as ingest hands
//! them on, resolved upstream (an identity table outside the join, as the
//! stage's), offered and released in batches of 5,000 with the changelog
//! taken after each batch, as the stage does.
//!
//! Not a criterion bench: it reports bytes, not time: resident memory from
//! `/proc/self/status`, with mimalloc as the binary runs it. Run with
//! `cargo bench --bench join_memory -- [passes] [budget MiB] [links]
//! [memory] [cold-memory]`: `links` measures the identity table alone, so
//! that the join's share is the difference, and the time it takes per
//! event; `memory` keeps the table in the heap instead of the stage's
//! default store on disk (`[enrich.link_table]`); `cold-memory` keeps the
//! join's cold customers in the heap instead of the stage's default, the
//! recent ones in memory and the rest on disk (`[enrich.cold_customers]`,
//! this partition's share of `recent_customers` as an instance holding
//! four partitions gives it). It also reports the time the
//! join takes per event (offer, release, the changelog taken) and the
//! events its history budget shed: at a small budget, what shedding
//! costs.

use xoflow_enrich::{
    config::ColdCustomersConfig,
    identity::{LinkStore, LinkTableConfig, Links},
    join::{ColdStore, Join},
    local_store::{LocalStore, StoreSizes},
};
use xoflow_proto::Message as _;

#[path = "join_support/mod.rs"]
mod join_support;

// The allocator the `xoflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

const BATCH: usize = 5_000;
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    // `cargo bench` passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let passes: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(40);
    let budget_mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(128);
    let links_only = args.iter().skip(2).any(|a| a == "links");
    let store = if args.iter().skip(2).any(|a| a == "memory") {
        LinkStore::Memory
    } else {
        LinkStore::Disk
    };
    let cold_on_disk = !args.iter().skip(2).any(|a| a == "cold-memory");

    let g = join_support::generated(1.0);
    let normaliser = join_support::normaliser();
    let now = join_support::NOW;
    let cfg = join_support::join_config();
    let mut join = Join::new(cfg);
    let cold = ColdCustomersConfig::default();
    let cold_store = LocalStore::open(
        "cold customers' store",
        "xoflow-bench-customers-",
        None,
        StoreSizes {
            cache_mib: cold.cache_mib,
            memtable_mib: cold.memtable_mib,
        },
    )
    .expect("the cold customers' store opens");
    if cold_on_disk {
        let table = ColdStore::open(&cold_store, cold.recent_customers / 4).expect("a table");
        join = join.with_cold_store(table);
    }
    join.set_history_budget(budget_mib << 20);
    // Customers a pass brings, for the identity table alone.
    let per_pass = g
        .events
        .iter()
        .filter_map(|e| e.customer.as_ref())
        .map(|c| c.customer_id.as_str())
        .filter(|id| !id.is_empty())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut links = Links::open(&LinkTableConfig {
        store,
        ..LinkTableConfig::default()
    })
    .expect("the link store opens");
    let mut learning = std::time::Duration::ZERO;
    let mut joining = std::time::Duration::ZERO;
    let mut shed = 0u64;
    let mut out = Vec::new();
    let mut offset = 0i64;
    let mut since_batch = 0usize;

    println!(
        "{} events a pass, {passes} passes, history budget {budget_mib} MiB, link table {store:?}, cold customers {}{}",
        g.events.len(),
        if cold_on_disk {
            "past the recent ones on disk"
        } else {
            "in memory"
        },
        if links_only {
            ", identity table only"
        } else {
            ""
        }
    );
    println!(
        "pass | customers | on disk | its write buffer MiB | links | waiting for a link | history MiB | RSS growth MiB | RSS bytes per new customer (last 10 passes) | link table ns per event | join ns per event | events shed"
    );
    let start = resident();
    let mut mark = (0usize, start);
    for pass in 0..passes {
        for raw in &g.events {
            let mut e = raw.clone();
            e.event_id = format!("{}-m{pass}", e.event_id);
            if pass > 0 {
                xoflow::bench::new_customers(&mut e, pass);
            }
            if normaliser.normalise(&mut e, now).is_err() {
                continue;
            }
            let t = std::time::Instant::now();
            links.learn(&e, |_, _| {});
            let who = links.resolve(&e);
            learning += t.elapsed();
            if links_only {
                continue;
            }
            let bytes = e.encode_to_vec();
            let t = std::time::Instant::now();
            join.offer_received(e, bytes, who, 0, offset, now);
            offset += 1;
            since_batch += 1;
            if since_batch == BATCH {
                since_batch = 0;
                join.drain(now, &mut out);
                join.shed_if_over();
                out.clear();
                drop(join.take_changes());
                drop(join.take_moves());
                shed += join.take_stats().shed_events;
            }
            joining += t.elapsed();
        }
        if (pass + 1) % 10 == 0 || pass + 1 == passes {
            let rss = resident();
            let customers = if links_only {
                (pass + 1) * per_pass
            } else {
                join.customers()
            };
            let per = rss.saturating_sub(mark.1) as f64 / (customers - mark.0).max(1) as f64;
            println!(
                "{:>4} | {customers:>9} | {:>7} | {:>5.1} | {:>9} | {:>18} | {:>11.0} | {:>14.0} | {per:.0} | {:.0} | {:.0} | {shed}",
                pass + 1,
                join.customers_on_disk(),
                cold_store.write_buffer_bytes() as f64 / MIB,
                links.len(),
                join.waiting_for_link(),
                join.history_bytes() as f64 / MIB,
                rss.saturating_sub(start) as f64 / MIB,
                learning.as_nanos() as f64 / ((pass + 1) * g.events.len()) as f64,
                joining.as_nanos() as f64 / ((pass + 1) * g.events.len()) as f64,
            );
            mark = (customers, rss);
        }
    }
}
