//! The demo's accounting, pure: from the sequence numbers the cloud emulator sent and those
//! each app process received, what was lost, duplicated or reordered, and what cannot be
//! known. No I/O, so it is unit-tested directly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What the demo observed around the crash.
#[derive(Debug, Clone, Default)]
pub(super) struct Observed {
    /// Transcription seqs the old process had received at the demo's last look, just
    /// before the SIGKILL.
    pub old_seen: Vec<u64>,
    /// The cloud's last generated seq once the killed process was reaped.
    pub kill_seq: u64,
    /// Seqs the new process received, in arrival order.
    pub new_seen: Vec<u64>,
    /// The cloud's last generated seq, read after the new process caught up with it.
    pub last_sent: u64,
}

/// What [`Observed`] adds up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Accounting {
    /// Last seq the old process had at the last look (0 = none).
    pub old_last: u64,
    /// Seqs the cloud sent after the kill: `kill_seq + 1 ..= last_sent`.
    pub after_kill: u64,
    /// Of those, the ones the new process never received.
    pub lost: Vec<u64>,
    /// Seqs the new process received more than once.
    pub duplicated: Vec<u64>,
    /// Places where the new process got a seq not above the one before it.
    pub out_of_order: u64,
    /// Seqs sent between the last look at the old process and the kill, whose fate the
    /// demo cannot see unless the new process got them: `old_last + 1 ..= kill_seq`.
    pub unknown_window: Option<(u64, u64)>,
    /// How many of [`Accounting::unknown_window`] the new process received.
    pub unknown_recovered: u64,
    /// Seqs both the old process (by the last look) and the new process received.
    pub received_twice_across: u64,
    /// First and last seq the new process received.
    pub new_span: Option<(u64, u64)>,
}

// === impl Observed ===

impl Observed {
    /// Adds everything up.
    pub(super) fn account(&self) -> Accounting {
        let old_last = self.old_seen.iter().copied().max().unwrap_or(0);
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for seq in &self.new_seen {
            *counts.entry(*seq).or_default() += 1;
        }
        let lost = (self.kill_seq + 1..=self.last_sent)
            .filter(|s| !counts.contains_key(s))
            .collect();
        let duplicated = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(s, _)| *s)
            .collect();
        let out_of_order = self.new_seen.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        let unknown_window = (old_last < self.kill_seq).then_some((old_last + 1, self.kill_seq));
        let unknown_recovered =
            unknown_window.map_or(0, |(a, b)| counts.range(a..=b).count() as u64);
        let old: BTreeSet<u64> = self.old_seen.iter().copied().collect();
        let received_twice_across = counts.keys().filter(|s| old.contains(s)).count() as u64;
        let new_span = match (self.new_seen.first(), self.new_seen.last()) {
            (Some(a), Some(b)) => Some((*a, *b)),
            _ => None,
        };
        Accounting {
            old_last,
            after_kill: self.last_sent.saturating_sub(self.kill_seq),
            lost,
            duplicated,
            out_of_order,
            unknown_window,
            unknown_recovered,
            received_twice_across,
            new_span,
        }
    }
}

/// `#3..#5, #9` for a sorted list of seqs; at most `max` runs, then `…`.
pub(super) fn runs(seqs: &[u64], max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0;
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut end = start;
        while i + 1 < seqs.len() && seqs[i + 1] == end + 1 {
            i += 1;
            end = seqs[i];
        }
        i += 1;
        if shown == max {
            out.push_str(", …");
            break;
        }
        if shown > 0 {
            out.push_str(", ");
        }
        let _ = if start == end {
            write!(out, "#{start}")
        } else {
            write!(out, "#{start}..#{end}")
        };
        shown += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(old: std::ops::RangeInclusive<u64>, kill: u64, new: &[u64], last: u64) -> Observed {
        Observed {
            old_seen: old.collect(),
            kill_seq: kill,
            new_seen: new.to_vec(),
            last_sent: last,
        }
    }

    #[test]
    fn a_clean_recovery_loses_nothing() {
        // Old saw 1..=50; 51..=52 went out before the kill; the new process got 51..=80.
        let new: Vec<u64> = (51..=80).collect();
        let a = observed(1..=50, 52, &new, 80).account();
        assert!(a.lost.is_empty() && a.duplicated.is_empty());
        assert_eq!(a.after_kill, 28);
        assert_eq!(a.unknown_window, Some((51, 52)));
        assert_eq!(a.unknown_recovered, 2);
        assert_eq!((a.out_of_order, a.received_twice_across), (0, 0));
        assert_eq!(a.new_span, Some((51, 80)));
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_counted() {
        let new = [53, 54, 54, 57, 56, 58];
        let a = observed(1..=53, 53, &new, 58).account();
        assert_eq!(a.lost, vec![55]);
        assert_eq!(a.duplicated, vec![54]);
        assert_eq!(a.out_of_order, 2, "54 after 54, 56 after 57");
        assert_eq!(a.unknown_window, None);
        assert_eq!(a.received_twice_across, 1, "53 reached both processes");
    }

    #[test]
    fn nothing_received_after_the_kill_is_all_lost() {
        let a = observed(1..=10, 12, &[], 15).account();
        assert_eq!(a.lost, vec![13, 14, 15]);
        assert_eq!(a.unknown_recovered, 0);
        assert_eq!(a.new_span, None);
    }

    #[test]
    fn runs_are_compact_and_bounded() {
        assert_eq!(runs(&[], 3), "");
        assert_eq!(runs(&[3, 4, 5, 9], 3), "#3..#5, #9");
        assert_eq!(runs(&[1, 3, 5, 7], 2), "#1, #3, …");
    }
}
