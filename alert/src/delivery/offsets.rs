//! Which offsets of the alerts topic may be committed.
//!
//! Alerts of one partition reach their final state (delivered,
//! dead-lettered, no webhook) in any order: a department whose receiver is
//! down holds its alerts for up to `give_up_after` while later alerts of
//! other departments are delivered at once. A partition is committed only
//! up to its lowest offset not final yet (or one past the highest read when
//! all are final): nothing below a committed offset is ever not final, so
//! after a crash everything not final is read again (and some final alerts
//! with it: at least once). Pure bookkeeping, no I/O; property-tested
//! below.

use std::collections::{BTreeSet, HashMap};

/// Per partition of the one input topic: what was read and is not final.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Offsets read whose alert is not final yet.
    pending: BTreeSet<i64>,
    /// One past the highest offset read.
    next: i64,
    /// The position last committed (or handed out to commit).
    committed: Option<i64>,
}

impl Partition {
    /// Where the partition may be committed: its lowest pending offset, or
    /// one past the highest read.
    fn position(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

impl Offsets {
    /// Records `offset` as read, not final.
    pub fn read(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.next = p.next.max(offset + 1);
        p.pending.insert(offset);
    }

    /// Marks `offset` final. An offset of a partition this instance no
    /// longer holds (revoked meanwhile) is ignored.
    pub fn settle(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.pending.remove(&offset);
        }
    }

    /// Forgets a revoked partition: its pending offsets are the next
    /// owner's to read again, and it is never committed from here again.
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// The partitions whose position moved past what was last committed,
    /// with that position; they are taken as committed.
    pub fn to_commit(&mut self) -> Vec<(i32, i64)> {
        let mut out: Vec<(i32, i64)> = self
            .partitions
            .iter_mut()
            .filter_map(|(id, p)| {
                let at = p.position();
                (p.committed.is_none_or(|c| at > c)).then(|| {
                    p.committed = Some(at);
                    (*id, at)
                })
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Offsets read and not final, over all partitions.
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_partition_is_committed_below_its_lowest_pending_offset() {
        let mut o = Offsets::default();
        for off in 10..15 {
            o.read(0, off);
        }
        o.read(1, 3);
        assert_eq!(o.to_commit(), [(0, 10), (1, 3)]);
        // Later offsets final first: nothing moves.
        o.settle(0, 12);
        o.settle(0, 14);
        assert_eq!(o.to_commit(), []);
        o.settle(0, 10);
        assert_eq!(o.to_commit(), [(0, 11)]);
        o.settle(0, 11);
        assert_eq!(o.to_commit(), [(0, 13)]);
        o.settle(0, 13);
        o.settle(1, 3);
        assert_eq!(o.to_commit(), [(0, 15), (1, 4)]);
        assert_eq!(o.to_commit(), []);
        assert_eq!(o.pending(), 0);
        // A gap in the offsets read (compaction, control records) is no
        // hole: only offsets read can be pending.
        o.read(0, 20);
        o.settle(0, 20);
        assert_eq!(o.to_commit(), [(0, 21)]);
    }

    #[test]
    fn a_revoked_partition_is_forgotten() {
        let mut o = Offsets::default();
        o.read(2, 7);
        o.drop_partition(2);
        o.settle(2, 7);
        assert_eq!(o.to_commit(), []);
        // Assigned again: it starts over.
        o.read(2, 5);
        assert_eq!(o.to_commit(), [(2, 5)]);
    }

    /// One step: read the next offset of a partition (and maybe settle it at
    /// once), or settle some pending offset.
    #[derive(Debug, Clone)]
    enum Step {
        Read { partition: i32, final_at_once: bool },
        Settle { pick: usize },
        Commit,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3i32, any::<bool>()).prop_map(|(partition, final_at_once)| Step::Read {
                partition,
                final_at_once
            }),
            any::<usize>().prop_map(|pick| Step::Settle { pick }),
            Just(Step::Commit),
        ]
    }

    proptest! {
        /// Whatever order alerts become final in: every committed position
        /// has every offset below it final, it never moves back, and once
        /// all are final each partition commits one past its last offset.
        #[test]
        fn commits_never_pass_an_offset_that_is_not_final(steps in prop::collection::vec(step(), 1..300)) {
            let mut o = Offsets::default();
            let mut next = [0i64; 3];
            let mut last_read = [None::<i64>; 3];
            let mut pending: Vec<(i32, i64)> = Vec::new();
            let mut committed = [None::<i64>; 3];
            let mut check = |o: &mut Offsets, pending: &Vec<(i32, i64)>| {
                for (p, at) in o.to_commit() {
                    let i = p as usize;
                    prop_assert!(committed[i].is_none_or(|c| at > c));
                    prop_assert!(pending.iter().all(|(q, off)| *q != p || *off >= at),
                        "committed {p}@{at} past a pending offset: {pending:?}");
                    committed[i] = Some(at);
                }
                Ok(())
            };
            for s in steps {
                match s {
                    Step::Read { partition, final_at_once } => {
                        let off = next[partition as usize];
                        // Offsets are read in order, sometimes with gaps.
                        next[partition as usize] += 1 + (off % 3 == 2) as i64;
                        o.read(partition, off);
                        last_read[partition as usize] = Some(off);
                        if final_at_once {
                            o.settle(partition, off);
                        } else {
                            pending.push((partition, off));
                        }
                    }
                    Step::Settle { pick } if !pending.is_empty() => {
                        let (p, off) = pending.swap_remove(pick % pending.len());
                        o.settle(p, off);
                    }
                    Step::Settle { .. } => {}
                    Step::Commit => check(&mut o, &pending)?,
                }
            }
            for (p, off) in pending.drain(..) {
                o.settle(p, off);
            }
            check(&mut o, &pending)?;
            for p in 0..3 {
                prop_assert_eq!(committed[p], last_read[p].map(|l| l + 1));
            }
            prop_assert_eq!(o.pending(), 0);
        }
    }
}
