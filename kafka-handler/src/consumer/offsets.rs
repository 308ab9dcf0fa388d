//! Which offset of a partition is safe to commit when records finish out of order.

use std::collections::VecDeque;

/// Tracks the records of one partition that were handed to handlers, in
/// offset order, and yields the *contiguous finished watermark*: the offset
/// after the last record before which everything has finished.
///
/// Offsets need not be contiguous (compaction and transaction markers leave
/// gaps); only the order in which records were dispatched matters.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    /// Dispatched records not yet below the watermark, ascending.
    pending: VecDeque<Pending>,
    /// Next offset to commit, once anything has finished.
    watermark: Option<i64>,
    /// Whether the watermark moved since it was last taken.
    moved: bool,
}

#[derive(Debug)]
struct Pending {
    offset: i64,
    /// The record's timestamp, ms since the Unix epoch, if it has one.
    timestamp: Option<i64>,
    finished: bool,
}

impl OffsetTracker {
    /// Records that `offset`, with its `timestamp`, was handed to a handler.
    pub(crate) fn dispatched(&mut self, offset: i64, timestamp: Option<i64>) {
        debug_assert!(self.pending.back().is_none_or(|last| last.offset < offset));
        self.pending.push_back(Pending { offset, timestamp, finished: false });
    }

    /// Records that `offset` was handed to a handler and finished at once.
    pub(crate) fn finished_at_once(&mut self, offset: i64, timestamp: Option<i64>) {
        if self.pending.is_empty() {
            debug_assert!(self.watermark.is_none_or(|w| w <= offset));
            self.watermark = Some(offset + 1);
            self.moved = true;
        } else {
            self.dispatched(offset, timestamp);
            self.finished(offset);
        }
    }

    /// The last offset handed to a handler, if any is still tracked.
    pub(crate) fn last_dispatched(&self) -> Option<i64> {
        self.pending.back().map(|p| p.offset).or(self.watermark.map(|w| w - 1))
    }

    /// Records that `offset` finished; returns false if it was not pending.
    pub(crate) fn finished(&mut self, offset: i64) -> bool {
        let Ok(index) = self.pending.binary_search_by_key(&offset, |p| p.offset) else {
            return false;
        };
        self.pending[index].finished = true;
        while let Some(&Pending { offset, finished: true, .. }) = self.pending.front() {
            self.pending.pop_front();
            self.watermark = Some(offset + 1);
            self.moved = true;
        }
        true
    }

    /// The oldest record handed to a handler and not finished: its offset and
    /// timestamp. Everything before it has finished.
    pub(crate) fn oldest_unfinished(&self) -> Option<(i64, Option<i64>)> {
        self.pending.front().map(|p| (p.offset, p.timestamp))
    }

    /// The watermark, if it moved since the last call.
    pub(crate) fn take_moved(&mut self) -> Option<i64> {
        std::mem::take(&mut self.moved).then_some(self.watermark).flatten()
    }

    /// The watermark, whether or not it moved.
    pub(crate) fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    #[cfg(test)]
    fn outstanding(&self) -> usize {
        self.pending.iter().filter(|p| !p.finished).count()
    }

    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_waits_for_the_oldest_record() {
        let mut t = OffsetTracker::default();
        for o in [10, 11, 13, 14] {
            t.dispatched(o, None);
        }
        assert!(t.finished(11));
        assert!(t.finished(14));
        assert_eq!(t.take_moved(), None, "10 is still running");
        assert_eq!(t.oldest_unfinished(), Some((10, None)));
        assert!(t.finished(10));
        assert_eq!(t.take_moved(), Some(12));
        assert_eq!(t.take_moved(), None);
        assert!(t.finished(13));
        assert_eq!(t.take_moved(), Some(15), "gaps in offsets are skipped");
        assert!(t.is_idle());
    }

    #[test]
    fn unknown_offsets_are_ignored() {
        let mut t = OffsetTracker::default();
        t.dispatched(1, None);
        assert!(!t.finished(2));
        assert_eq!(t.outstanding(), 1);
    }

    #[test]
    fn random_completion_order_never_passes_an_unfinished_record() {
        // A small deterministic shuffle: the watermark must always equal the
        // first unfinished offset.
        let n = 500i64;
        let mut t = OffsetTracker::default();
        (0..n).for_each(|o| t.dispatched(o * 2, None));
        let mut order: Vec<i64> = (0..n).collect();
        let mut x = 12345u64;
        for i in (1..order.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (x >> 33) as usize % (i + 1));
        }
        let mut done = vec![false; n as usize];
        for &i in &order {
            t.finished(i * 2);
            done[i as usize] = true;
            let first_unfinished = done.iter().position(|d| !d).map(|p| p as i64 * 2);
            if let Some(w) = t.watermark() {
                match first_unfinished {
                    Some(f) => assert!(w <= f, "watermark {w} passed unfinished {f}"),
                    None => assert_eq!(w, (n - 1) * 2 + 1),
                }
            }
        }
    }
}
