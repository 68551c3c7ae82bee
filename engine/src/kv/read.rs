//! Reads served straight from the key-value state machine: point gets and ordered scans.
//!
//! These read the state as of [`applied_index`](crate::state_machine::StateMachine::applied_index).
//! Making a read linearizable (waiting until the applied index reaches a confirmed read
//! index) is the runtime's job.

use std::ops::Bound;

use bytes::Bytes;

use super::command::{Query, ScanRange};
use super::output::{KeyValue, QueryResult, ScanPage, VersionedValue};
use super::store::KvStateMachine;

impl KvStateMachine {
    /// Returns the value of `key` with its `mod_index`, or `None` when the key is absent.
    pub fn get(&self, key: &[u8]) -> Option<VersionedValue> {
        self.keys.get(key).cloned()
    }

    /// Returns up to `limit` keys that start with `prefix`, in ascending order. An empty
    /// prefix selects every key.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> ScanPage {
        let end_key = prefix_end(prefix);
        let end = match &end_key {
            Some(end_key) => Bound::Excluded(&end_key[..]),
            None => Bound::Unbounded,
        };
        self.scan_bounds(Bound::Included(prefix), end, limit)
    }

    /// Returns up to `limit` keys `k` with `start <= k < end`, or `start <= k` when `end`
    /// is `None`, in ascending order. A range whose `end` is not greater than `start` is
    /// empty.
    pub fn scan_range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> ScanPage {
        let end = match end {
            Some(end) if end <= start => return ScanPage::default(),
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.scan_bounds(Bound::Included(start), end, limit)
    }

    /// Returns up to `limit` keys of `range`, in ascending order.
    pub fn scan(&self, range: &ScanRange, limit: usize) -> ScanPage {
        match range {
            ScanRange::Prefix(prefix) => self.scan_prefix(prefix, limit),
            ScanRange::Range { start, end } => self.scan_range(start, end.as_deref(), limit),
        }
    }

    /// Serves a decoded client query.
    pub fn query(&self, query: &Query) -> QueryResult {
        match query {
            Query::Get { key } => QueryResult::Value(self.get(key)),
            Query::Scan { range, limit } => {
                // Saturates only on 16-bit targets, where no page could hold more keys.
                let limit = usize::try_from(*limit).unwrap_or(usize::MAX);
                QueryResult::Page(self.scan(range, limit))
            }
        }
    }

    /// Scans between bounds that the caller has checked to be in order, so that a reversed
    /// range is empty whatever the map's `range` does with one (`BTreeMap::range` panics).
    fn scan_bounds(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> ScanPage {
        let mut range = self.keys.range::<_, [u8]>((start, end));
        let entries = range
            .by_ref()
            .take(limit)
            .map(|(key, versioned)| KeyValue {
                key: key.clone(),
                value: versioned.value.clone(),
                mod_index: versioned.mod_index,
            })
            .collect();
        let more = range.next().is_some();
        ScanPage { entries, more }
    }
}

/// Returns the smallest key greater than every key that starts with `prefix`, or `None`
/// when no such key exists (the prefix is empty or all `0xFF` bytes), in which case a
/// prefix scan has no upper bound.
///
/// A client paging through a prefix continues with
/// [`ScanRange::Range`] from the last key it received plus a zero byte, up to this end.
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let last_incrementable = prefix.iter().rposition(|&byte| byte != u8::MAX)?;
    let mut end = prefix[..=last_incrementable].to_vec();
    end[last_incrementable] += 1;
    Some(Bytes::from(end))
}
