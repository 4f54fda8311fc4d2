//! Resuming a partition at a known position, on any Kafka-protocol broker.
//!
//! A consumer that takes over a partition (start-up, rebalance, restart)
//! fetches from where the group left it — a committed offset, or the
//! position a stage stored downstream. Kafka answers a fetch that starts
//! inside a record batch with the whole batch and the client skips the
//! records before the position. Tansu 0.6, the local broker, answers with
//! the *next* batch instead: the records between the position and the end
//! of its batch would be silently skipped. [`ResumeCheck`] notices the
//! first record of a partition arriving past the position and asks the
//! caller to seek back — further each time, because a seek to the exact
//! position meets the same answer — until a record at or before the
//! position arrives; from then on the partition reads on. Records before
//! the position, which the seek brings back, were handled already; the
//! caller skips them ([`ResumeCheck::next`]).

/// How far back the first seek goes; doubled on each further try.
pub const REWIND: i64 = 16_384;

/// What to do with a partition's next record.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Read on (a record before [`ResumeCheck::next`] was handled already).
    Read,
    /// The broker answered past the position: drop the record and seek here.
    SeekTo(i64),
    /// Already rewound to offset 0 and still past the position: the records
    /// between are gone from the log (retention); read on and say so.
    Gap { from: i64, to: i64 },
}

/// Checks one partition's records against the position it resumed at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeCheck {
    /// The first offset not yet handled.
    next: i64,
    /// Whether a record at or before `next` has been read since, i.e.
    /// nothing between can have been skipped.
    contiguous: bool,
    /// How far back the last seek went (0: none yet).
    rewound: i64,
}

impl ResumeCheck {
    /// Resuming at `next`, the first offset not yet handled. A partition
    /// with no position (nothing committed: the log's beginning is read,
    /// which starts a batch) passes `None` and always reads on.
    pub fn at(next: Option<i64>) -> Self {
        ResumeCheck {
            next: next.unwrap_or(0).max(0),
            contiguous: next.is_none(),
            rewound: 0,
        }
    }

    /// Resuming at `next` by first reading from up to [`REWIND`] records
    /// earlier, without waiting to see where the broker answers: a position
    /// inside the log's last record batch gets no answer at all from a broker
    /// that skips to the next batch, until more records arrive. Returns the
    /// check and the offset to start reading from.
    pub fn rewound(next: i64) -> (Self, i64) {
        let next = next.max(0);
        let check = ResumeCheck {
            next,
            contiguous: next == 0,
            rewound: REWIND,
        };
        (check, (next - REWIND).max(0))
    }

    /// The first offset not yet handled when the partition was resumed.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// Checks `offset`, the next record read from this partition. Pure.
    pub fn check(&mut self, offset: i64) -> Resume {
        let next = self.next;
        if self.contiguous || offset <= next {
            self.contiguous = true;
            return Resume::Read;
        }
        if self.rewound > 0 && next - self.rewound <= 0 {
            self.contiguous = true;
            return Resume::Gap {
                from: next,
                to: offset,
            };
        }
        self.rewound = if self.rewound == 0 {
            REWIND
        } else {
            self.rewound.saturating_mul(2)
        };
        Resume::SeekTo((next - self.rewound).max(0))
    }
}

/// Logs a seek back after the broker answered `got` for a partition
/// resumed at `next`.
pub fn log_seek(topic: &str, partition: i32, next: i64, got: i64, seek: i64) {
    tracing::info!(
        topic,
        partition,
        next,
        got,
        seek,
        "broker answered past the position the partition resumes at; reading from earlier"
    );
}

/// Logs records gone from the log before they were handled.
pub fn log_gap(topic: &str, partition: i32, from: i64, to: i64) {
    tracing::error!(
        topic,
        partition,
        from,
        to,
        "records missing from the log (deleted by retention before they were handled)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_at_the_position_reads_on() {
        let mut s = ResumeCheck::at(Some(100));
        assert_eq!(s.check(100), Resume::Read);
        assert_eq!(s.check(500), Resume::Read, "contiguity is proven once");
        let mut s = ResumeCheck::at(Some(100));
        assert_eq!(
            s.check(42),
            Resume::Read,
            "re-reads are the caller's to skip"
        );
        assert_eq!(s.next(), 100);
    }

    #[test]
    fn no_position_reads_whatever_comes() {
        let mut s = ResumeCheck::at(None);
        assert_eq!(s.check(7_000), Resume::Read);
        assert_eq!(s.next(), 0);
    }

    #[test]
    fn a_broker_answering_past_the_position_is_rewound_further_each_time() {
        let mut s = ResumeCheck::at(Some(40_001));
        assert_eq!(s.check(40_100), Resume::SeekTo(40_001 - REWIND));
        assert_eq!(s.check(40_050), Resume::SeekTo(40_001 - 2 * REWIND));
        assert_eq!(s.check(40_001 - REWIND), Resume::Read);
    }

    #[test]
    fn a_partition_rewound_up_front_reads_from_earlier_and_rewinds_further_if_needed() {
        let (mut s, start) = ResumeCheck::rewound(40_001);
        assert_eq!(start, 40_001 - REWIND);
        assert_eq!(s.check(40_100), Resume::SeekTo(40_001 - 2 * REWIND));
        assert_eq!(s.check(30_000), Resume::Read);
        assert_eq!(s.next(), 40_001);

        let (mut s, start) = ResumeCheck::rewound(100);
        assert_eq!(start, 0);
        assert_eq!(
            s.check(7_000),
            Resume::Gap {
                from: 100,
                to: 7_000
            }
        );
        let (mut s, start) = ResumeCheck::rewound(0);
        assert_eq!(start, 0);
        assert_eq!(s.check(7_000), Resume::Read);
    }

    #[test]
    fn records_gone_from_the_log_are_reported_once_rewound_to_zero() {
        let mut s = ResumeCheck::at(Some(11));
        assert_eq!(s.check(5_000), Resume::SeekTo(0));
        assert_eq!(
            s.check(5_000),
            Resume::Gap {
                from: 11,
                to: 5_000
            }
        );
        assert_eq!(s.check(5_001), Resume::Read);
    }
}
