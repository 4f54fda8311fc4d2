//! Where each Kafka partition stands in ClickHouse, read from ClickHouse
//! itself: the exactly-once half of the sink.
//!
//! Every row carries its lineage (topic, partition, offset). When the sink
//! meets a partition it has no state for (start-up, or a partition moved to
//! it in a rebalance), it reads the highest offset already stored for that
//! partition — for the enriched topic in `events` and among the rows
//! ClickHouse refused (kept in `dead_letters` with `refused = 1`), for the
//! dead-letter topic in `dead_letters` — and the (tenant, event id,
//! revision) triples written in a recent window. Records at or below that offset are already
//! stored and are skipped; records whose triple was already written (an
//! upstream redelivery: enrich retried or replayed, a client re-sent) are
//! skipped too, while a higher revision of a written event (enrich repaired
//! its joined context) is written. Kafka's committed offsets only bound how
//! much is re-read; they decide nothing.
//!
//! The partition map is cleared for revoked partitions recorded by the
//! consumer's [`RebalanceLog`](xoflow_common::rebalance::RebalanceLog),
//! whose callbacks rdkafka runs inside `recv()` on the sink's own task: a
//! revoke is therefore seen between flushes, never during one, so a
//! partition's new owner reads the position only after the old owner's last
//! insert finished.

use std::collections::HashSet;

use clickhouse::{Client, Row};
use serde::Deserialize;

pub use xoflow_common::resume::Resume;
use xoflow_common::{resume::ResumeCheck, telemetry::ErrorKind};

use super::SinkError;
use crate::telemetry::Metric;

/// What the sink knows about one partition it owns.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Highest offset stored in ClickHouse (or written by this sink since);
    /// -1 when nothing is.
    pub stored: i64,
    /// Rows stored from this partition (ClickHouse's count at load, plus
    /// rows written since): the reconciliation figure.
    pub rows: u64,
    /// (tenant, event id, revision) triples written from this partition
    /// within the dedup window.
    pub recent: Written,
    /// Whether the broker resumed this partition at `stored + 1` (or
    /// before); see [`xoflow_common::resume`].
    pub resume: ResumeCheck,
    /// Records of the batch being filled: (highest offset seen, skipped
    /// records included; rows taken for writing).
    pub pending: Option<(i64, u64)>,
}

impl PartitionState {
    /// Checks `offset`, the next record read from this partition: whether
    /// the broker answered past `stored + 1` (Tansu 0.6 does when a fetch
    /// starts inside a record batch). Pure.
    pub fn resume(&mut self, offset: i64) -> Resume {
        self.resume.check(offset)
    }
}

/// The (tenant, event id, revision) triples written from one partition:
/// the dedup key, as in `event_ids`. A redelivered copy of a revision has the same pair and is skipped;
/// a repair (a higher revision of the same event) has a new one and is
/// written.
///
/// A pair is kept as its 128-bit XXH3 hash under a seed drawn when the set
/// is made, not as its event id: 16 bytes in the set's slot instead of a
/// copy of the id on the heap (some 100 bytes a pair in all), and no
/// allocation per record; [`Written::bound`] keeps the table at the first
/// size with room for `dedup_window` pairs and a batch. Two
/// pairs share a hash with a probability of 2^-128 per pair of pairs
/// (under 10^-26 for a full window), and the seed is unknown outside the
/// process, so that no event id can be chosen to pass for another's.
#[derive(Debug)]
pub struct Written {
    pairs: HashSet<u128, foldhash::fast::RandomState>,
    seed: u64,
}

impl Default for Written {
    fn default() -> Self {
        Written {
            pairs: HashSet::default(),
            // std's per-process random keys, drawn from the OS.
            seed: std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8),
        }
    }
}

impl Written {
    fn key(&self, tenant: &str, event_id: &str, revision: u32) -> u128 {
        // The tenant, a NUL (no tenant name holds one), the id and the
        // revision's four bytes last: no two triples make the same input.
        // One-shot on a stack buffer: the streaming hasher costs twice as
        // much.
        let (tenant, id) = (tenant.as_bytes(), event_id.as_bytes());
        let len = tenant.len() + 1 + id.len() + 4;
        let mut buf = [0u8; 160];
        if len <= buf.len() {
            buf[..tenant.len()].copy_from_slice(tenant);
            let at = tenant.len() + 1;
            buf[at..at + id.len()].copy_from_slice(id);
            buf[at + id.len()..len].copy_from_slice(&revision.to_le_bytes());
            xxhash_rust::xxh3::xxh3_128_with_seed(&buf[..len], self.seed)
        } else {
            xxhash_rust::xxh3::xxh3_128_with_seed(
                &[tenant, &[0], id, &revision.to_le_bytes()].concat(),
                self.seed,
            )
        }
    }

    /// Records that `tenant`'s `(event_id, revision)` is being written;
    /// false when it already was (a copy). The tenant is part of the key:
    /// event ids are unique within a tenant only (two shops' `order:1001:2`
    /// are two events).
    pub fn first_time(&mut self, tenant: &str, event_id: &str, revision: u32) -> bool {
        self.pairs.insert(self.key(tenant, event_id, revision))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Bounds the memory (`event_ids` still knows every pair written):
    /// once the set holds `window` pairs, it forgets them all before the
    /// next batch (up to `headroom` pairs) could make its table grow, and
    /// keeps the table. So a partition never holds a larger table than the
    /// first one with room for `window` pairs and a batch: a table doubles
    /// when full (17 bytes a slot), and one cleared only at twice the
    /// window (as before) took its partition from 36 to 71 MB at a window
    /// of 1,000,000, at 1.84M pairs. Returns whether it forgot.
    pub fn bound(&mut self, window: usize, headroom: usize) -> bool {
        let len = self.pairs.len();
        let forget = len >= window && len.saturating_add(headroom) > self.pairs.capacity();
        if forget {
            self.pairs.clear();
        }
        forget
    }

    /// Pairs the set's table has room for before it grows.
    #[cfg(test)]
    fn room(&self) -> usize {
        self.pairs.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl Extend<(String, String, u32)> for Written {
    fn extend<I: IntoIterator<Item = (String, String, u32)>>(&mut self, triples: I) {
        for (tenant, event_id, revision) in triples {
            self.first_time(&tenant, &event_id, revision);
        }
    }
}

/// Which of the sink's two inputs a partition belongs to; each has its own
/// idea of "stored".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The enriched topic: stored as rows of `events`, or as rows
    /// ClickHouse refused, kept in `dead_letters` with `refused = 1`.
    Enriched,
    /// The dead-letter topic: stored in `dead_letters` (`refused = 0`).
    DeadLetters,
}

impl Input {
    /// Rows of `topic`/`partition` already stored for this input, as one
    /// `kafka_offset`/`tenant`/`event_id`/`revision` relation with two `?` (topic,
    /// partition) per branch.
    pub(super) fn stored_rows(self) -> &'static str {
        match self {
            Input::Enriched => {
                "(SELECT kafka_offset, tenant, event_id, revision FROM events \
                  WHERE kafka_topic = ? AND kafka_partition = ? \
                  UNION ALL SELECT kafka_offset, tenant, event_id, revision FROM dead_letters \
                  WHERE refused = 1 AND kafka_topic = ? AND kafka_partition = ?)"
            }
            Input::DeadLetters => {
                "(SELECT kafka_offset, tenant, event_id, revision FROM dead_letters \
                  WHERE refused = 0 AND kafka_topic = ? AND kafka_partition = ?)"
            }
        }
    }

    pub(super) fn branches(self) -> usize {
        match self {
            Input::Enriched => 2,
            Input::DeadLetters => 1,
        }
    }
}

#[derive(Debug, Row, Deserialize)]
struct Stored {
    rows: u64,
    max_offset: i64,
}

/// How much of a partition ClickHouse holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRange {
    /// Rows stored from the partition (redelivered copies dropped, so this
    /// may be less than the offsets covered).
    pub rows: u64,
    /// Highest offset stored; -1 when none is.
    pub max_offset: i64,
}

/// How much of `topic`/`partition` ClickHouse holds for `input`.
pub async fn stored(
    client: &Client,
    input: Input,
    topic: &str,
    partition: i32,
) -> Result<StoredRange, SinkError> {
    let mut q = client.query(&format!(
        "SELECT count() AS rows, toInt64(max(kafka_offset)) AS max_offset FROM {}",
        input.stored_rows()
    ));
    for _ in 0..input.branches() {
        q = q.bind(topic).bind(partition);
    }
    let s: Stored = q.fetch_one().await.map_err(SinkError::clickhouse)?;
    Ok(StoredRange {
        rows: s.rows,
        max_offset: if s.rows > 0 { s.max_offset } else { -1 },
    })
}

/// Loads the state of a partition: its stored offset and the (event id,
/// revision) pairs written within `window` offsets below it.
pub async fn load(
    client: &Client,
    input: Input,
    topic: &str,
    partition: i32,
    window: i64,
) -> Result<PartitionState, SinkError> {
    wait_for_running_inserts(client).await?;
    let range = stored(client, input, topic, partition).await?;
    let mut recent = Written::default();
    if range.max_offset >= 0 && input == Input::Enriched {
        let mut q = client.query(&format!(
            "SELECT tenant, event_id, revision FROM {} WHERE kafka_offset > ?",
            input.stored_rows()
        ));
        for _ in 0..input.branches() {
            q = q.bind(topic).bind(partition);
        }
        let ids: Vec<(String, String, u32)> = q
            .bind(range.max_offset - window)
            .fetch_all()
            .await
            .map_err(SinkError::clickhouse)?;
        recent.extend(ids);
    }
    Ok(PartitionState {
        stored: range.max_offset,
        rows: range.rows,
        recent,
        resume: ResumeCheck::at(Some(range.max_offset + 1)),
        ..Default::default()
    })
}

/// Longest wait for inserts still running on the server.
const INSERT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until no insert into `table` is running on the server (at most
/// [`INSERT_WAIT`]). A previous owner killed while its last insert was in
/// flight leaves that insert running; it may still land, and the position
/// must be read after it does, or its rows would be written twice.
async fn wait_for_running_inserts(client: &Client) -> Result<(), SinkError> {
    let until = tokio::time::Instant::now() + INSERT_WAIT;
    loop {
        // Both tables: a refused row's dead letter is part of the position.
        let running: u64 = client
            .query("SELECT count() FROM system.processes WHERE query LIKE ? OR query LIKE ?")
            .bind("INSERT INTO `events`%")
            .bind("INSERT INTO `dead_letters`%")
            .fetch_one()
            .await
            .map_err(SinkError::clickhouse)?;
        if running == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            ErrorKind::ReadBack.emit(
                Metric::Errors.name(),
                &format!("{running} inserts still running after {INSERT_WAIT:?}"),
                "inserts still running after the wait; reading the position anyway",
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The state of every partition this sink owns. A short list searched in
/// place: a sink owns few partitions, and the per-record lookup must not
/// allocate a key.
#[derive(Debug, Default)]
pub struct Positions {
    parts: Vec<(String, i32, PartitionState)>,
}

impl Positions {
    pub fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionState> {
        self.parts
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
            .map(|(_, _, s)| s)
    }

    pub fn contains(&self, topic: &str, partition: i32) -> bool {
        self.parts
            .iter()
            .any(|(t, p, _)| *p == partition && t == topic)
    }

    pub fn insert(&mut self, topic: &str, partition: i32, state: PartitionState) {
        self.remove(topic, partition);
        self.parts.push((topic.to_owned(), partition, state));
    }

    pub fn remove(&mut self, topic: &str, partition: i32) {
        self.parts
            .retain(|(t, p, _)| !(*p == partition && t == topic));
    }

    /// Forgets every partition: each is read again from ClickHouse when a
    /// record of it comes.
    pub fn clear(&mut self) {
        self.parts.clear();
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&PartitionState) -> bool) {
        self.parts.retain(|(_, _, s)| keep(s));
    }

    /// One row fewer to be stored from the partition in the pending batch
    /// (a copy found already stored).
    pub fn uncount(&mut self, topic: &str, partition: i32) {
        if let Some((_, rows)) = self
            .get_mut(topic, partition)
            .and_then(|s| s.pending.as_mut())
        {
            *rows = rows.saturating_sub(1);
        }
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, i32, &mut PartitionState)> {
        self.parts.iter_mut().map(|(t, p, s)| (t.as_str(), *p, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_position_resumes_after_what_is_stored() {
        // The check itself is tested in xoflow_common::resume.
        let mut s = PartitionState {
            stored: 40_000,
            resume: ResumeCheck::at(Some(40_001)),
            ..Default::default()
        };
        assert_eq!(
            s.resume(40_100),
            Resume::SeekTo(40_001 - xoflow_common::resume::REWIND)
        );
        assert_eq!(s.resume(40_001), Resume::Read);
    }

    #[test]
    fn the_window_is_forgotten_before_its_table_would_grow() {
        let mut w = Written::default();
        let (window, headroom) = (1_000, 100);
        let (mut forgotten, mut largest) = (0, 0);
        for batch in 0..200 {
            let before = w.len();
            if w.bound(window, headroom) {
                forgotten += 1;
                assert!(w.is_empty());
                // Only once the window was known.
                assert!(before >= window, "batch {batch}: {before}");
            }
            // One batch of `headroom` pairs, as the sink flushes.
            for i in 0..headroom {
                assert!(w.first_time("t", &format!("e{batch}-{i}"), 0));
            }
            largest = largest.max(w.room());
        }
        assert!(forgotten > 5, "{forgotten}");
        // The table stopped at the first size with room for a window and
        // a batch (hashbrown's sizes double).
        assert!(
            largest >= window + headroom && largest < 2 * (window + headroom),
            "{largest}"
        );
        // Under the window nothing is forgotten, however full the table.
        let mut small = Written::default();
        small.first_time("t", "e", 0);
        assert!(!small.bound(2, usize::MAX));
        assert!(!small.first_time("t", "e", 0));
    }

    #[test]
    fn a_repair_is_written_and_a_copy_of_a_revision_is_not() {
        let mut w = Written::default();
        // As loaded from ClickHouse: revision 0 of e1 was stored.
        w.extend([("t".to_owned(), "e1".to_owned(), 0)]);
        let id = "e1";
        let table = [
            (1, true, "a repair of e1"),
            (1, false, "a redelivered copy of revision 1"),
            (2, true, "a second repair"),
            (0, false, "revision 0 replayed after revision 2"),
            (2, false, "the latest revision re-emitted after a crash"),
        ];
        for (revision, written, what) in table {
            assert_eq!(w.first_time("t", id, revision), written, "{what}");
        }
        assert!(w.first_time("t", "e2", 1), "another event's revision 1");
        assert!(
            w.first_time("t", "e", 1),
            "an id that is a prefix of another"
        );
        // Event ids are unique within a tenant only: two shops' order 1001.
        assert!(w.first_time("u", "e1", 0), "another tenant's e1");
        assert!(!w.first_time("u", "e1", 0), "a copy of it");
        assert!(w.first_time("te", "1", 9), "tenant and id split elsewhere");
        // Ids too long for the stack buffer are hashed the same way.
        let long = "x".repeat(200);
        assert!(w.first_time("t", &long, 0));
        assert!(!w.first_time("t", &long, 0));
        assert!(w.first_time("t", &long, 1));
        assert!(w.first_time("u", &long, 1));
        assert_eq!(w.len(), 10);
    }
}
