//! Behaviour of the built-in key-value state machine: commands, reads, the command
//! encoding, rejected entries and snapshots, checked against a `BTreeMap` model.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use shardraft::kv::{
    CodecError, Command, CommandError, Condition, KeyValue, KvLimits, KvStateMachine, Query,
    QueryResult, RestoreError, ScanPage, ScanRange, VersionedValue, WriteOutcome, WriteResult,
    codec, prefix_end, snapshot,
};
use shardraft::raft::{Entry, EntryKind, LogIndex, Term};
use shardraft::state_machine::{ApplyOrderError, Snapshot, SnapshotView, StateMachine};

const LIMITS: KvLimits = KvLimits {
    key_bytes_max: 16,
    value_bytes_max: 32,
};

fn store() -> KvStateMachine {
    KvStateMachine::new(LIMITS)
}

fn normal_entry(kv: &KvStateMachine, data: Bytes) -> Entry {
    Entry {
        term: Term(1),
        index: kv.applied_index().next(),
        kind: EntryKind::Normal,
        data,
    }
}

/// Applies `data` as the next entry and returns the command's output.
fn apply_bytes(kv: &mut KvStateMachine, data: Bytes) -> Result<WriteResult, CommandError> {
    let entry = normal_entry(kv, data);
    kv.apply(&entry)
        .expect("entry is in order")
        .expect("a normal entry has an output")
}

fn apply(kv: &mut KvStateMachine, command: &Command) -> Result<WriteResult, CommandError> {
    apply_bytes(kv, command.encode().expect("command encodes"))
}

fn apply_noop(kv: &mut KvStateMachine) {
    let entry = Entry {
        term: Term(1),
        index: kv.applied_index().next(),
        kind: EntryKind::LeaderNoop,
        data: Bytes::new(),
    };
    let output = kv.apply(&entry).expect("entry is in order");
    assert!(output.is_none());
}

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn delete(key: &[u8]) -> Command {
    Command::Delete { key: key.to_vec() }
}

fn cas(key: &[u8], condition: Condition, new_value: Option<&[u8]>) -> Command {
    Command::CompareAndSwap {
        key: key.to_vec(),
        condition,
        new_value: new_value.map(<[u8]>::to_vec),
    }
}

fn versioned(value: &'static [u8], mod_index: u64) -> VersionedValue {
    VersionedValue {
        value: Bytes::from_static(value),
        mod_index: LogIndex(mod_index),
    }
}

fn keys_of(page: &ScanPage) -> Vec<&[u8]> {
    page.entries.iter().map(|entry| &entry.key[..]).collect()
}

/// Every key of the store with its value and mod_index.
fn contents(kv: &KvStateMachine) -> Vec<KeyValue> {
    let page = kv.scan_prefix(b"", usize::MAX);
    assert!(!page.more);
    page.entries
}

// Commands.

#[test]
fn put_stores_value_at_entry_index() {
    let mut kv = store();
    apply_noop(&mut kv);

    let result = apply(&mut kv, &put(b"a", b"1")).unwrap();

    assert_eq!(result.index, LogIndex(2));
    assert_eq!(result.outcome, WriteOutcome::Stored);
    assert_eq!(kv.get(b"a"), Some(versioned(b"1", 2)));
    assert_eq!(kv.len(), 1);
}

#[test]
fn put_replaces_value_and_mod_index() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();

    let result = apply(&mut kv, &put(b"a", b"2")).unwrap();

    assert_eq!(result.index, LogIndex(2));
    assert_eq!(kv.get(b"a"), Some(versioned(b"2", 2)));
    assert_eq!(kv.len(), 1);
}

#[test]
fn put_accepts_empty_key_and_value() {
    let mut kv = store();

    let result = apply(&mut kv, &put(b"", b"")).unwrap();

    assert_eq!(result.outcome, WriteOutcome::Stored);
    assert_eq!(kv.get(b""), Some(versioned(b"", 1)));
}

#[test]
fn get_absent_key_returns_none() {
    let kv = store();

    assert_eq!(kv.get(b"missing"), None);
    assert!(kv.is_empty());
}

#[test]
fn delete_removes_existing_key() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();

    let result = apply(&mut kv, &delete(b"a")).unwrap();

    assert_eq!(result.index, LogIndex(2));
    assert_eq!(result.outcome, WriteOutcome::Deleted { existed: true });
    assert_eq!(kv.get(b"a"), None);
    assert!(kv.is_empty());
}

#[test]
fn delete_absent_key_reports_not_existed() {
    let mut kv = store();
    apply(&mut kv, &put(b"b", b"1")).unwrap();

    let result = apply(&mut kv, &delete(b"a")).unwrap();

    assert_eq!(result.index, LogIndex(2));
    assert_eq!(result.outcome, WriteOutcome::Deleted { existed: false });
    assert_eq!(kv.get(b"b"), Some(versioned(b"1", 1)));
}

#[test]
fn rewrite_after_delete_starts_new_mod_index() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();
    apply(&mut kv, &delete(b"a")).unwrap();

    apply(&mut kv, &put(b"a", b"1")).unwrap();

    assert_eq!(kv.get(b"a"), Some(versioned(b"1", 3)));
}

#[test]
fn cas_on_value_swaps_on_match() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"old")).unwrap();

    let command = cas(b"a", Condition::ValueEquals(b"old".to_vec()), Some(b"new"));
    let result = apply(&mut kv, &command).unwrap();

    assert_eq!(result.index, LogIndex(2));
    assert_eq!(result.outcome, WriteOutcome::Swapped);
    assert_eq!(kv.get(b"a"), Some(versioned(b"new", 2)));
}

#[test]
fn cas_on_value_rejects_mismatch() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"old")).unwrap();

    let command = cas(
        b"a",
        Condition::ValueEquals(b"other".to_vec()),
        Some(b"new"),
    );
    let result = apply(&mut kv, &command).unwrap();

    assert_eq!(result.index, LogIndex(2));
    assert_eq!(
        result.outcome,
        WriteOutcome::ConditionFailed {
            current: Some(versioned(b"old", 1))
        }
    );
    assert_eq!(kv.get(b"a"), Some(versioned(b"old", 1)));
}

#[test]
fn cas_on_value_rejects_absent_key() {
    let mut kv = store();

    let command = cas(b"a", Condition::ValueEquals(Vec::new()), Some(b"new"));
    let result = apply(&mut kv, &command).unwrap();

    assert_eq!(
        result.outcome,
        WriteOutcome::ConditionFailed { current: None }
    );
    assert_eq!(kv.get(b"a"), None);
}

#[test]
fn cas_on_absence_creates_key() {
    let mut kv = store();

    let result = apply(&mut kv, &cas(b"a", Condition::Absent, Some(b"1"))).unwrap();

    assert_eq!(result.outcome, WriteOutcome::Swapped);
    assert_eq!(kv.get(b"a"), Some(versioned(b"1", 1)));
}

#[test]
fn cas_on_absence_rejects_existing_key() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();

    let result = apply(&mut kv, &cas(b"a", Condition::Absent, Some(b"2"))).unwrap();

    assert_eq!(
        result.outcome,
        WriteOutcome::ConditionFailed {
            current: Some(versioned(b"1", 1))
        }
    );
    assert_eq!(kv.get(b"a"), Some(versioned(b"1", 1)));
}

#[test]
fn cas_on_mod_index_swaps_on_match() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();
    apply(&mut kv, &put(b"a", b"2")).unwrap();

    let command = cas(b"a", Condition::ModIndexEquals(2), Some(b"3"));
    let result = apply(&mut kv, &command).unwrap();

    assert_eq!(result.outcome, WriteOutcome::Swapped);
    assert_eq!(kv.get(b"a"), Some(versioned(b"3", 3)));
}

#[test]
fn cas_on_mod_index_rejects_mismatch() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();
    apply(&mut kv, &put(b"a", b"2")).unwrap();

    let command = cas(b"a", Condition::ModIndexEquals(1), Some(b"3"));
    let result = apply(&mut kv, &command).unwrap();

    assert_eq!(
        result.outcome,
        WriteOutcome::ConditionFailed {
            current: Some(versioned(b"2", 2))
        }
    );
    assert_eq!(kv.get(b"a"), Some(versioned(b"2", 2)));
}

#[test]
fn cas_on_mod_index_rejects_absent_key() {
    let mut kv = store();

    let zero = apply(
        &mut kv,
        &cas(b"a", Condition::ModIndexEquals(0), Some(b"1")),
    )
    .unwrap();
    let one = apply(
        &mut kv,
        &cas(b"a", Condition::ModIndexEquals(1), Some(b"1")),
    )
    .unwrap();

    assert_eq!(
        zero.outcome,
        WriteOutcome::ConditionFailed { current: None }
    );
    assert_eq!(one.outcome, WriteOutcome::ConditionFailed { current: None });
    assert_eq!(kv.get(b"a"), None);
}

#[test]
fn cas_without_new_value_deletes_key() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();

    let command = cas(b"a", Condition::ValueEquals(b"1".to_vec()), None);
    let result = apply(&mut kv, &command).unwrap();

    assert_eq!(result.outcome, WriteOutcome::Swapped);
    assert_eq!(kv.get(b"a"), None);
}

// Limits.

#[test]
fn limits_accept_key_and_value_at_maximum() {
    let mut kv = store();
    let key = vec![b'k'; LIMITS.key_bytes_max];
    let value = vec![b'v'; LIMITS.value_bytes_max];

    let result = apply(&mut kv, &put(&key, &value)).unwrap();

    assert_eq!(result.outcome, WriteOutcome::Stored);
    assert_eq!(kv.get(&key).unwrap().value, value);
    assert_eq!(kv.limits(), LIMITS);
}

#[test]
fn limits_reject_oversized_key_for_every_command() {
    let mut kv = store();
    let key = vec![b'k'; LIMITS.key_bytes_max + 1];
    let expected = CommandError::KeyTooLarge {
        key_bytes: 17,
        key_bytes_max: 16,
    };
    let commands = [
        put(&key, b"1"),
        delete(&key),
        cas(&key, Condition::Absent, Some(b"1")),
    ];

    for command in &commands {
        let before = kv.applied_index();
        let error = apply(&mut kv, command).unwrap_err();
        assert_eq!(error, expected, "{command:?}");
        assert_eq!(kv.applied_index(), before.next(), "{command:?}");
    }
    assert!(kv.is_empty());
    assert!(expected.to_string().contains("17 bytes"));
    assert!(expected.to_string().contains("key_bytes_max"));
}

#[test]
fn limits_reject_oversized_value() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();
    let value = vec![b'v'; LIMITS.value_bytes_max + 1];
    let expected = CommandError::ValueTooLarge {
        value_bytes: 33,
        value_bytes_max: 32,
    };

    let put_error = apply(&mut kv, &put(b"a", &value)).unwrap_err();
    let cas_command = cas(b"a", Condition::ModIndexEquals(1), Some(&value));
    let cas_error = apply(&mut kv, &cas_command).unwrap_err();

    assert_eq!(put_error, expected);
    assert_eq!(cas_error, expected);
    assert_eq!(kv.get(b"a"), Some(versioned(b"1", 1)));
    assert_eq!(kv.applied_index(), LogIndex(3));
    assert!(expected.to_string().contains("value_bytes_max"));
}

// Scans.

fn store_with_keys(keys: &[&[u8]]) -> KvStateMachine {
    let mut kv = store();
    for key in keys {
        apply(&mut kv, &put(key, b"v")).unwrap();
    }
    kv
}

#[test]
fn scan_prefix_returns_matching_keys_in_order() {
    let kv = store_with_keys(&[b"b/2", b"a", b"b/1", b"b", b"c", b"b/10"]);

    let page = kv.scan_prefix(b"b/", 10);

    assert_eq!(keys_of(&page), [&b"b/1"[..], b"b/10", b"b/2"]);
    assert!(!page.more);
    assert_eq!(page.entries[0].mod_index, LogIndex(3));
    assert_eq!(page.entries[0].value, Bytes::from_static(b"v"));
}

#[test]
fn scan_prefix_empty_selects_every_key() {
    let kv = store_with_keys(&[b"b", b"", b"a"]);

    let page = kv.scan_prefix(b"", 10);

    assert_eq!(keys_of(&page), [&b""[..], b"a", b"b"]);
    assert!(!page.more);
}

#[test]
fn scan_prefix_handles_max_bytes() {
    let kv = store_with_keys(&[b"\xff", b"\xff\xff", b"\xff\x00", b"\xfe\xff", b"a\xff\xff"]);

    let all_ff = kv.scan_prefix(b"\xff", 10);
    let trailing_ff = kv.scan_prefix(b"a\xff", 10);

    assert_eq!(keys_of(&all_ff), [&b"\xff"[..], b"\xff\x00", b"\xff\xff"]);
    assert_eq!(keys_of(&trailing_ff), [&b"a\xff\xff"[..]]);
}

#[test]
fn scan_prefix_without_match_is_empty() {
    let kv = store_with_keys(&[b"a", b"c"]);

    let page = kv.scan_prefix(b"b", 10);

    assert!(page.entries.is_empty());
    assert!(!page.more);
}

#[test]
fn scan_range_includes_start_excludes_end() {
    let kv = store_with_keys(&[b"a", b"b", b"c", b"d"]);

    let page = kv.scan_range(b"b", Some(b"d"), 10);

    assert_eq!(keys_of(&page), [&b"b"[..], b"c"]);
    assert!(!page.more);
}

#[test]
fn scan_range_without_end_runs_to_last_key() {
    let kv = store_with_keys(&[b"a", b"b", b"c"]);

    let page = kv.scan_range(b"b", None, 10);

    assert_eq!(keys_of(&page), [&b"b"[..], b"c"]);
}

#[test]
fn scan_range_end_before_start_is_empty() {
    let kv = store_with_keys(&[b"a", b"b", b"c"]);

    let reversed = kv.scan_range(b"c", Some(b"a"), 10);
    let equal = kv.scan_range(b"b", Some(b"b"), 10);

    assert!(reversed.entries.is_empty());
    assert!(!reversed.more);
    assert!(equal.entries.is_empty());
    assert!(!equal.more);
}

#[test]
fn scan_limit_zero_returns_no_keys() {
    let kv = store_with_keys(&[b"a", b"b"]);

    let with_keys = kv.scan_prefix(b"", 0);
    let without_keys = kv.scan_prefix(b"z", 0);

    assert!(with_keys.entries.is_empty());
    assert!(with_keys.more);
    assert!(without_keys.entries.is_empty());
    assert!(!without_keys.more);
}

#[test]
fn scan_limit_truncates_and_reports_more() {
    let kv = store_with_keys(&[b"a", b"b", b"c"]);

    let truncated = kv.scan_range(b"a", None, 2);
    let exact = kv.scan_range(b"a", None, 3);

    assert_eq!(keys_of(&truncated), [&b"a"[..], b"b"]);
    assert!(truncated.more);
    assert_eq!(exact.entries.len(), 3);
    assert!(!exact.more);
}

#[test]
fn scan_pages_through_prefix() {
    let kv = store_with_keys(&[b"p1", b"p2", b"p3", b"p4", b"p5", b"q"]);
    let end = prefix_end(b"p");
    let mut start = b"p".to_vec();
    let mut seen = Vec::new();

    loop {
        let page = kv.scan_range(&start, end.as_deref(), 2);
        seen.extend(page.entries.iter().map(|entry| entry.key.to_vec()));
        if !page.more {
            break;
        }
        start = page.entries.last().unwrap().key.to_vec();
        start.push(0);
    }

    assert_eq!(seen, [b"p1", b"p2", b"p3", b"p4", b"p5"]);
}

#[test]
fn prefix_end_increments_last_byte_below_max() {
    assert_eq!(prefix_end(b""), None);
    assert_eq!(prefix_end(b"\xff\xff"), None);
    assert_eq!(prefix_end(b"ab"), Some(Bytes::from_static(b"ac")));
    assert_eq!(prefix_end(b"a\xff"), Some(Bytes::from_static(b"b")));
    assert_eq!(prefix_end(b"\x00"), Some(Bytes::from_static(b"\x01")));
}

#[test]
fn query_serves_get_and_scan() {
    let kv = store_with_keys(&[b"a", b"b"]);
    let get = Query::Get { key: b"a".to_vec() };
    let scan = Query::Scan {
        range: ScanRange::Range {
            start: b"a".to_vec(),
            end: Some(b"b".to_vec()),
        },
        limit: 5,
    };
    let prefix = Query::Scan {
        range: ScanRange::Prefix(Vec::new()),
        limit: 1,
    };

    let get_result = kv.query(&Query::decode(&get.encode().unwrap()).unwrap());
    let scan_result = kv.query(&Query::decode(&scan.encode().unwrap()).unwrap());
    let prefix_result = kv.query(&prefix);

    assert_eq!(get_result, QueryResult::Value(Some(versioned(b"v", 1))));
    let QueryResult::Page(scan_page) = scan_result else {
        panic!("a scan returns a page, got {scan_result:?}");
    };
    assert_eq!(keys_of(&scan_page), [&b"a"[..]]);
    let QueryResult::Page(prefix_page) = prefix_result else {
        panic!("a scan returns a page, got {prefix_result:?}");
    };
    assert_eq!(keys_of(&prefix_page), [&b"a"[..]]);
    assert!(prefix_page.more);
}

// Entries and ordering.

#[test]
fn noop_entries_advance_applied_index_only() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();

    let noop = Entry {
        term: Term(2),
        index: LogIndex(2),
        kind: EntryKind::LeaderNoop,
        // A no-op's data is never decoded, even when it is not a command.
        data: Bytes::from_static(b"not a command"),
    };
    let output = kv.apply(&noop).unwrap();

    assert!(output.is_none());
    assert_eq!(kv.applied_index(), LogIndex(2));
    assert_eq!(kv.applied_term(), Term(2));
    assert_eq!(kv.get(b"a"), Some(versioned(b"1", 1)));
    assert_eq!(kv.len(), 1);
}

#[test]
fn apply_rejects_gap_and_repeat() {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();
    let data = put(b"b", b"2").encode().unwrap();
    let mut gap = normal_entry(&kv, data.clone());
    gap.index = LogIndex(3);
    let mut repeat = normal_entry(&kv, data);
    repeat.index = LogIndex(1);

    let gap_error = kv.apply(&gap).unwrap_err();
    let repeat_error = kv.apply(&repeat).unwrap_err();

    assert_eq!(
        gap_error,
        ApplyOrderError {
            index: LogIndex(3),
            expected: LogIndex(2)
        }
    );
    assert_eq!(repeat_error.expected, LogIndex(2));
    assert_eq!(kv.applied_index(), LogIndex(1));
    assert_eq!(kv.get(b"b"), None);
    assert!(gap_error.to_string().contains("out of order"));
}

// Encoding and rejected entries.

#[test]
fn encoding_round_trips_every_command() {
    let commands = [
        put(b"k", b"v"),
        put(b"", b""),
        delete(b"k"),
        cas(b"k", Condition::ValueEquals(b"old".to_vec()), Some(b"new")),
        cas(b"k", Condition::Absent, None),
        cas(b"k", Condition::ModIndexEquals(u64::MAX), Some(b"")),
    ];

    for command in commands {
        let encoded = command.encode().unwrap();
        assert_eq!(encoded[0], codec::FORMAT_VERSION, "{command:?}");
        assert_eq!(Command::decode(&encoded).unwrap(), command);
    }
}

#[test]
fn decoding_accepts_any_buffer_alignment() {
    let command = put(b"key", b"value");
    let encoded = command.encode().unwrap();

    for offset in 0..32 {
        let mut buffer = vec![0xAA; offset];
        buffer.extend_from_slice(&encoded);
        let shifted = Bytes::from(buffer).slice(offset..);
        assert_eq!(
            Command::decode(&shifted).unwrap(),
            command,
            "offset {offset}"
        );
    }
}

/// Applies `data` to a store holding one key and checks that the entry was rejected with
/// a decode error, counted as applied and changed nothing else.
fn assert_rejected_as_invalid(data: Bytes) -> CodecError {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();
    let before = contents(&kv);

    let error = apply_bytes(&mut kv, data.clone()).unwrap_err();

    assert_eq!(kv.applied_index(), LogIndex(2), "data {data:?}");
    assert_eq!(contents(&kv), before, "data {data:?}");
    let CommandError::Decode(codec_error) = error else {
        panic!("expected a decode error for {data:?}, got {error:?}");
    };
    codec_error
}

#[test]
fn empty_entry_is_rejected() {
    let error = assert_rejected_as_invalid(Bytes::new());

    assert_eq!(error, CodecError::Empty { kind: "command" });
}

#[test]
fn unknown_version_is_rejected() {
    let mut data = put(b"b", b"2").encode().unwrap().to_vec();
    data[0] = 7;

    let error = assert_rejected_as_invalid(Bytes::from(data));

    assert_eq!(
        error,
        CodecError::UnknownVersion {
            kind: "command",
            version: 7,
            supported: codec::FORMAT_VERSION
        }
    );
    assert!(error.to_string().contains("version 7"));
}

#[test]
fn garbage_entry_is_rejected() {
    let garbage: [&[u8]; 4] = [
        b"\x01",
        b"\x01garbage!",
        &[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        &[0x01; 64],
    ];

    for data in garbage {
        let error = assert_rejected_as_invalid(Bytes::copy_from_slice(data));
        assert!(
            matches!(error, CodecError::InvalidArchive { .. }),
            "data {data:?} gave {error:?}"
        );
    }
}

#[test]
fn invalid_archive_error_is_deterministic() {
    // rkyv's own validation messages contain buffer addresses, which differ between
    // replicas, so the error must not carry them.
    let data: &[u8] = b"\x01\x05\x00\x00\x00";
    let first = Command::decode(&Bytes::copy_from_slice(data)).unwrap_err();
    let mut padded = vec![0; 3];
    padded.extend_from_slice(data);
    let second = Command::decode(&padded[3..]).unwrap_err();

    assert_eq!(first, second);
    assert_eq!(first.to_string(), second.to_string());
    assert!(!first.to_string().contains("0x"), "{first}");
    assert!(first.to_string().contains("4 bytes"), "{first}");
}

#[test]
fn truncated_entry_is_rejected() {
    let data = cas(
        b"key",
        Condition::ValueEquals(b"old".to_vec()),
        Some(b"new"),
    )
    .encode()
    .unwrap();

    for length in 1..data.len() {
        let error = assert_rejected_as_invalid(data.slice(..length));
        assert!(
            matches!(error, CodecError::InvalidArchive { .. }),
            "length {length} gave {error:?}"
        );
    }
}

#[test]
fn corrupted_entry_never_panics_or_half_applies() {
    let data = cas(b"a", Condition::ModIndexEquals(1), Some(b"new"))
        .encode()
        .unwrap();

    for bit in 0..data.len() * 8 {
        let mut corrupted = data.to_vec();
        corrupted[bit / 8] ^= 1 << (bit % 8);
        let mut kv = store();
        apply(&mut kv, &put(b"a", b"1")).unwrap();
        let before = contents(&kv);

        let output = apply_bytes(&mut kv, Bytes::from(corrupted.clone()));

        assert_eq!(kv.applied_index(), LogIndex(2), "bit {bit}");
        match Command::decode(&corrupted) {
            // A flip inside a key or value leaves a valid command, which must act exactly
            // like the same command encoded afresh.
            Ok(command) => {
                let mut reference = store();
                apply(&mut reference, &put(b"a", b"1")).unwrap();
                let expected = apply(&mut reference, &command);
                assert_eq!(output, expected, "bit {bit}");
                assert_eq!(contents(&kv), contents(&reference), "bit {bit}");
            }
            Err(codec_error) => {
                assert_eq!(output, Err(CommandError::Decode(codec_error)), "bit {bit}");
                assert_eq!(contents(&kv), before, "bit {bit}");
            }
        }
    }
}

// Snapshots.

fn populated_store() -> KvStateMachine {
    let mut kv = store();
    apply(&mut kv, &put(b"a", b"1")).unwrap();
    apply(&mut kv, &put(b"b", b"")).unwrap();
    apply(&mut kv, &put(b"", b"empty key")).unwrap();
    apply_noop(&mut kv);
    apply(&mut kv, &put(b"a", b"2")).unwrap();
    apply(&mut kv, &put(b"c\xff", b"3")).unwrap();
    apply(&mut kv, &delete(b"b")).unwrap();
    kv
}

#[test]
fn snapshot_round_trip_restores_state() {
    let kv = populated_store();
    let snapshot = kv.snapshot();
    let mut restored = store();

    restored.restore(&snapshot).unwrap();

    assert_eq!(snapshot.index, LogIndex(7));
    assert_eq!(snapshot.term, Term(1));
    assert_eq!(restored.applied_index(), LogIndex(7));
    assert_eq!(restored.applied_term(), Term(1));
    assert_eq!(contents(&restored), contents(&kv));
    assert_eq!(restored.get(b"a"), Some(versioned(b"2", 5)));
    assert_eq!(restored.snapshot(), snapshot);
}

#[test]
fn snapshot_of_empty_store_round_trips() {
    let snapshot = store().snapshot();
    let mut restored = populated_store();

    restored.restore(&snapshot).unwrap();

    assert_eq!(snapshot.index, LogIndex(0));
    assert!(restored.is_empty());
    assert_eq!(restored.applied_index(), LogIndex(0));
    assert_eq!(restored.applied_term(), Term(0));
}

#[test]
fn snapshot_view_is_unaffected_by_later_writes() {
    let mut kv = populated_store();
    let expected = kv.snapshot();
    let view = kv.snapshot_view();

    apply(&mut kv, &put(b"a", b"changed")).unwrap();
    apply(&mut kv, &delete(b"")).unwrap();
    apply(&mut kv, &put(b"new", b"key")).unwrap();

    assert_eq!(view.index(), LogIndex(7));
    assert_eq!(view.term(), Term(1));
    assert_eq!(view.serialize(), expected);
    assert_eq!(kv.get(b"a"), Some(versioned(b"changed", 8)));
}

#[test]
fn restored_store_applies_following_entries() {
    let kv = populated_store();
    let mut restored = store();
    restored.restore(&kv.snapshot()).unwrap();

    let result = apply(
        &mut restored,
        &cas(b"a", Condition::ModIndexEquals(5), Some(b"x")),
    );

    assert_eq!(result.unwrap().index, LogIndex(8));
    assert_eq!(restored.get(b"a"), Some(versioned(b"x", 8)));
}

/// Restores `data` under the metadata of `template` into a populated store, checks that
/// the store is unchanged and returns the error.
fn assert_restore_rejected(template: &Snapshot, data: Vec<u8>) -> RestoreError {
    let mut kv = populated_store();
    let before = contents(&kv);
    let snapshot = Snapshot {
        data: Bytes::from(data),
        ..template.clone()
    };

    let error = kv.restore(&snapshot).unwrap_err();

    assert_eq!(contents(&kv), before);
    assert_eq!(kv.applied_index(), LogIndex(7));
    error
}

#[test]
fn snapshot_with_any_bit_flip_is_rejected() {
    let snapshot = populated_store().snapshot();

    for bit in 0..snapshot.data.len() * 8 {
        let mut data = snapshot.data.to_vec();
        data[bit / 8] ^= 1 << (bit % 8);
        let error = assert_restore_rejected(&snapshot, data);
        let expected_kind = match bit / 8 {
            0..4 => matches!(error, RestoreError::InvalidMagic { .. }),
            4 => matches!(error, RestoreError::UnknownVersion { .. }),
            _ => matches!(error, RestoreError::ChecksumMismatch { .. }),
        };
        assert!(expected_kind, "bit {bit} gave {error:?}");
    }
}

#[test]
fn snapshot_truncated_anywhere_is_rejected() {
    let snapshot = populated_store().snapshot();

    for length in 0..snapshot.data.len() {
        let data = snapshot.data[..length].to_vec();
        let error = assert_restore_rejected(&snapshot, data);
        let expected_kind = matches!(
            error,
            RestoreError::TooShort { .. } | RestoreError::ChecksumMismatch { .. }
        );
        assert!(expected_kind, "length {length} gave {error:?}");
    }
}

#[test]
fn snapshot_with_wrong_metadata_is_rejected() {
    let snapshot = populated_store().snapshot();
    let mut wrong_index = snapshot.clone();
    wrong_index.index = LogIndex(8);
    let mut wrong_term = snapshot.clone();
    wrong_term.term = Term(2);

    let index_error = assert_restore_rejected(&wrong_index, snapshot.data.to_vec());
    let term_error = assert_restore_rejected(&wrong_term, snapshot.data.to_vec());

    assert_eq!(
        index_error,
        RestoreError::MetadataMismatch {
            data_index: 7,
            data_term: 1,
            metadata_index: 8,
            metadata_term: 1
        }
    );
    assert!(matches!(term_error, RestoreError::MetadataMismatch { .. }));
}

/// Builds snapshot data by hand, with a correct checksum, so that the checks after the
/// checksum can be reached.
fn handmade_snapshot(index: u64, key_count: u64, keys: &[(&[u8], &[u8], u64)]) -> Vec<u8> {
    let mut data = snapshot::SNAPSHOT_MAGIC.to_vec();
    data.push(snapshot::SNAPSHOT_FORMAT_VERSION);
    data.extend_from_slice(&index.to_le_bytes());
    data.extend_from_slice(&1u64.to_le_bytes());
    data.extend_from_slice(&key_count.to_le_bytes());
    for (key, value, mod_index) in keys {
        data.extend_from_slice(&(key.len() as u64).to_le_bytes());
        data.extend_from_slice(key);
        data.extend_from_slice(&(value.len() as u64).to_le_bytes());
        data.extend_from_slice(value);
        data.extend_from_slice(&mod_index.to_le_bytes());
    }
    with_checksum(data)
}

fn with_checksum(mut data: Vec<u8>) -> Vec<u8> {
    let checksum = crc32fast::hash(&data);
    data.extend_from_slice(&checksum.to_le_bytes());
    data
}

fn metadata(index: u64) -> Snapshot {
    Snapshot {
        index: LogIndex(index),
        term: Term(1),
        data: Bytes::new(),
    }
}

#[test]
fn handmade_snapshot_is_accepted() {
    let data = handmade_snapshot(5, 2, &[(b"a", b"1", 1), (b"b", b"2", 5)]);
    let mut kv = store();

    kv.restore(&Snapshot {
        data: Bytes::from(data),
        ..metadata(5)
    })
    .unwrap();

    assert_eq!(kv.get(b"a"), Some(versioned(b"1", 1)));
    assert_eq!(kv.get(b"b"), Some(versioned(b"2", 5)));
}

#[test]
fn snapshot_with_unordered_keys_is_rejected() {
    let unordered = handmade_snapshot(5, 2, &[(b"b", b"1", 1), (b"a", b"2", 2)]);
    let duplicate = handmade_snapshot(5, 2, &[(b"a", b"1", 1), (b"a", b"2", 2)]);

    let unordered_error = assert_restore_rejected(&metadata(5), unordered);
    let duplicate_error = assert_restore_rejected(&metadata(5), duplicate);

    assert_eq!(
        unordered_error,
        RestoreError::KeysOutOfOrder { position: 1 }
    );
    assert_eq!(
        duplicate_error,
        RestoreError::KeysOutOfOrder { position: 1 }
    );
}

#[test]
fn snapshot_rejects_out_of_range_mod_index() {
    let zero = handmade_snapshot(5, 1, &[(b"a", b"1", 0)]);
    let future = handmade_snapshot(5, 1, &[(b"a", b"1", 6)]);

    let zero_error = assert_restore_rejected(&metadata(5), zero);
    let future_error = assert_restore_rejected(&metadata(5), future);

    assert_eq!(
        zero_error,
        RestoreError::ModIndexOutOfRange {
            position: 0,
            mod_index: 0,
            snapshot_index: 5
        }
    );
    assert!(matches!(
        future_error,
        RestoreError::ModIndexOutOfRange { mod_index: 6, .. }
    ));
}

#[test]
fn snapshot_with_wrong_key_count_is_rejected() {
    let too_many = handmade_snapshot(5, 3, &[(b"a", b"1", 1), (b"b", b"2", 2)]);
    let too_few = handmade_snapshot(5, 1, &[(b"a", b"1", 1), (b"b", b"2", 2)]);
    let huge = handmade_snapshot(5, u64::MAX, &[(b"a", b"1", 1)]);

    let too_many_error = assert_restore_rejected(&metadata(5), too_many);
    let too_few_error = assert_restore_rejected(&metadata(5), too_few);
    let huge_error = assert_restore_rejected(&metadata(5), huge);

    assert!(matches!(
        too_many_error,
        RestoreError::Truncated {
            field: "key length",
            ..
        }
    ));
    assert!(matches!(too_few_error, RestoreError::TrailingBytes { .. }));
    assert!(matches!(huge_error, RestoreError::Truncated { .. }));
}

#[test]
fn snapshot_with_oversized_length_is_rejected() {
    let mut data = handmade_snapshot(5, 1, &[(b"a", b"1", 1)]);
    data.truncate(data.len() - 4);
    // The key length field follows the 29-byte header.
    data[29..37].copy_from_slice(&u64::MAX.to_le_bytes());
    let data = with_checksum(data);

    let error = assert_restore_rejected(&metadata(5), data);

    assert_eq!(
        error,
        RestoreError::Truncated {
            field: "key",
            offset: 37,
            needed_bytes: u64::MAX,
            remaining_bytes: 18
        }
    );
    assert!(error.to_string().contains("truncated"));
}

#[test]
fn snapshot_with_unknown_version_is_rejected() {
    let mut data = handmade_snapshot(5, 0, &[]);
    data.truncate(data.len() - 4);
    data[4] = 9;
    let data = with_checksum(data);

    let error = assert_restore_rejected(&metadata(5), data);

    assert_eq!(
        error,
        RestoreError::UnknownVersion {
            version: 9,
            supported: snapshot::SNAPSHOT_FORMAT_VERSION
        }
    );
}

// Model-based properties.

#[derive(Clone, Debug)]
enum Step {
    Command(Command),
    Noop,
    Garbage(Vec<u8>),
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    // Few distinct keys, so that commands often hit existing keys.
    prop::collection::vec(0u8..3, 0..3)
}

fn value_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..3, 0..3)
}

fn condition_strategy() -> impl Strategy<Value = Condition> {
    prop_oneof![
        value_strategy().prop_map(Condition::ValueEquals),
        Just(Condition::Absent),
        (0u64..12).prop_map(Condition::ModIndexEquals),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let oversized_key = vec![0; LIMITS.key_bytes_max + 1];
    let oversized_value = vec![0; LIMITS.value_bytes_max + 1];
    prop_oneof![
        4 => (key_strategy(), value_strategy())
            .prop_map(|(key, value)| Step::Command(Command::Put { key, value })),
        2 => key_strategy().prop_map(|key| Step::Command(Command::Delete { key })),
        4 => (
            key_strategy(),
            condition_strategy(),
            prop::option::of(value_strategy())
        )
            .prop_map(|(key, condition, new_value)| {
                Step::Command(Command::CompareAndSwap {
                    key,
                    condition,
                    new_value,
                })
            }),
        1 => Just(Step::Noop),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Step::Garbage),
        1 => Just(Step::Command(Command::Delete { key: oversized_key })),
        1 => (key_strategy()).prop_map(move |key| {
            Step::Command(Command::Put {
                key,
                value: oversized_value.clone(),
            })
        }),
    ]
}

/// The reference semantics: key to (value, mod_index).
type Model = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

fn model_outcome(model: &mut Model, index: u64, command: &Command) -> Option<WriteOutcome> {
    let key_fits = |key: &Vec<u8>| key.len() <= LIMITS.key_bytes_max;
    let value_fits = |value: &Vec<u8>| value.len() <= LIMITS.value_bytes_max;
    let current = |model: &Model, key: &Vec<u8>| {
        model.get(key).map(|(value, mod_index)| VersionedValue {
            value: Bytes::from(value.clone()),
            mod_index: LogIndex(*mod_index),
        })
    };
    match command {
        Command::Put { key, value } => {
            if !key_fits(key) || !value_fits(value) {
                return None;
            }
            model.insert(key.clone(), (value.clone(), index));
            Some(WriteOutcome::Stored)
        }
        Command::Delete { key } => {
            if !key_fits(key) {
                return None;
            }
            let existed = model.remove(key).is_some();
            Some(WriteOutcome::Deleted { existed })
        }
        Command::CompareAndSwap {
            key,
            condition,
            new_value,
        } => {
            if !key_fits(key) || !new_value.as_ref().is_none_or(value_fits) {
                return None;
            }
            let holds = match (condition, model.get(key)) {
                (Condition::Absent, existing) => existing.is_none(),
                (Condition::ValueEquals(expected), Some((value, _))) => value == expected,
                (Condition::ModIndexEquals(expected), Some((_, mod_index))) => {
                    mod_index == expected
                }
                (_, None) => false,
            };
            if !holds {
                return Some(WriteOutcome::ConditionFailed {
                    current: current(model, key),
                });
            }
            match new_value {
                Some(value) => model.insert(key.clone(), (value.clone(), index)),
                None => model.remove(key),
            };
            Some(WriteOutcome::Swapped)
        }
    }
}

fn model_contents(model: &Model) -> Vec<KeyValue> {
    model
        .iter()
        .map(|(key, (value, mod_index))| KeyValue {
            key: Bytes::from(key.clone()),
            value: Bytes::from(value.clone()),
            mod_index: LogIndex(*mod_index),
        })
        .collect()
}

/// Applies one step and returns its output, `None` for a no-op.
fn apply_step(kv: &mut KvStateMachine, step: &Step) -> Option<Result<WriteResult, CommandError>> {
    match step {
        Step::Command(command) => Some(apply(kv, command)),
        Step::Noop => {
            apply_noop(kv);
            None
        }
        Step::Garbage(bytes) => Some(apply_bytes(kv, Bytes::from(bytes.clone()))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn kv_matches_btreemap_model(
        steps in prop::collection::vec(step_strategy(), 0..60),
        scans in prop::collection::vec((key_strategy(), key_strategy(), 0usize..5), 0..8),
    ) {
        let mut kv = store();
        let mut model = Model::new();

        for step in &steps {
            let index = kv.applied_index().0 + 1;
            let output = apply_step(&mut kv, step);
            prop_assert_eq!(kv.applied_index(), LogIndex(index));
            match (step, output) {
                (Step::Noop, output) => prop_assert!(output.is_none()),
                (Step::Garbage(bytes), Some(Ok(result))) => {
                    // Random bytes can form a valid command; the model then applies it.
                    let command = Command::decode(bytes).unwrap();
                    let expected = model_outcome(&mut model, index, &command);
                    prop_assert_eq!(Some(result.outcome), expected);
                }
                (Step::Garbage(_), Some(Err(error))) => {
                    prop_assert!(matches!(error, CommandError::Decode(_)));
                }
                (Step::Command(command), Some(output)) => {
                    let expected = model_outcome(&mut model, index, command);
                    prop_assert_eq!(output.ok().map(|result| result.outcome), expected);
                }
                (step, None) => prop_assert!(false, "{step:?} returned no output"),
            }
        }
        prop_assert_eq!(contents(&kv), model_contents(&model));

        for (start, end, limit) in scans {
            let page = kv.scan_range(&start, Some(&end), limit);
            let in_range: Vec<&Vec<u8>> = model
                .keys()
                .filter(|key| **key >= start && **key < end)
                .collect();
            let expected: Vec<&[u8]> =
                in_range.iter().take(limit).map(|key| key.as_slice()).collect();
            prop_assert_eq!(keys_of(&page), expected);
            prop_assert_eq!(page.more, in_range.len() > limit);

            let prefix_page = kv.scan_prefix(&start, limit);
            let with_prefix: Vec<&Vec<u8>> =
                model.keys().filter(|key| key.starts_with(&start)).collect();
            let expected: Vec<&[u8]> =
                with_prefix.iter().take(limit).map(|key| key.as_slice()).collect();
            prop_assert_eq!(keys_of(&prefix_page), expected);
            prop_assert_eq!(prefix_page.more, with_prefix.len() > limit);
        }
    }

    #[test]
    fn snapshot_then_rest_matches_straight_run(
        steps in prop::collection::vec(step_strategy(), 0..60),
        split_fraction in 0.0f64..=1.0,
    ) {
        let split = ((steps.len() as f64) * split_fraction) as usize;
        let mut straight = store();
        for step in &steps[..split] {
            apply_step(&mut straight, step);
        }
        let snapshot = straight.snapshot();
        let mut restored = store();
        restored.restore(&snapshot).unwrap();
        prop_assert_eq!(restored.applied_index(), straight.applied_index());

        for step in &steps[split..] {
            let straight_output = apply_step(&mut straight, step);
            let restored_output = apply_step(&mut restored, step);
            prop_assert_eq!(restored_output, straight_output);
        }

        prop_assert_eq!(contents(&restored), contents(&straight));
        prop_assert_eq!(restored.applied_index(), straight.applied_index());
        prop_assert_eq!(restored.applied_term(), straight.applied_term());
        prop_assert_eq!(restored.snapshot(), straight.snapshot());
    }
}
