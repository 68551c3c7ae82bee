//! The write-ahead log benchmark drivers against a real disk log, with small loads. These
//! check counts and bookkeeping only, never speed.

use std::path::PathBuf;
use std::time::Duration;

use shardraft::log::{DiskLog, GroupId, LogConfig, LogIdentity, LogStore};
use shardraft_bench::wal::device::{BLOCK_BYTES, DeviceProbe};
use shardraft_bench::wal::environment;
use shardraft_bench::wal::load::{self, LoadSpec, Warmup};
use shardraft_bench::wal::payload::PayloadKind;

/// Creates a fresh directory for one test, on the filesystem the benchmarks default to.
fn test_dir(name: &str) -> PathBuf {
    let parent = environment::default_data_dir();
    environment::prepare_data_dir(&parent).unwrap();
    let dir = parent.join(format!("test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    dir
}

fn small_config(dir: &std::path::Path) -> LogConfig {
    LogConfig {
        data_dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        flush_bytes_max: 64 << 10,
        pending_bytes_max: 1 << 20,
        ..LogConfig::default()
    }
}

const IDENTITY: LogIdentity = LogIdentity {
    cluster_id: 1,
    node_id: 1,
    shard: 0,
};

#[test]
fn counted_load_makes_every_entry_durable() {
    let dir = test_dir("counted");
    let config = small_config(&dir);
    let spec = LoadSpec {
        entry_bytes: 100,
        appenders: 4,
        entries_per_submit: 3,
        compact_every_entries: 9,
        compact_every_bytes: 0,
        payload: PayloadKind::Random,
    };
    let executor = glommio::LocalExecutorBuilder::default().make().unwrap();

    let (first, second, states) = executor.run(async {
        let log = DiskLog::open(&config, IDENTITY).await.unwrap();
        let first = load::run_entries(&log, spec, 200).await.unwrap();
        let second = load::run_entries(&log, spec, 100).await.unwrap();
        let states: Vec<_> = (0..4)
            .map(|group| log.group_state(GroupId(group)))
            .collect();
        log.close().await.unwrap();
        (first, second, states)
    });

    assert_eq!(first.entries, 200);
    assert_eq!(second.entries, 100);
    assert!(first.syncs >= 1);
    assert!(first.syncs <= first.latency_nanos.len());
    // 200 entries in submissions of at most 3: at least 67 submissions, one sample each.
    assert!(
        first.latency_nanos.len() >= 67,
        "{}",
        first.latency_nanos.len()
    );
    assert!(first.written_bytes >= first.syncs * BLOCK_BYTES);
    let last_total: u64 = states
        .iter()
        .map(|state| state.expect("every appender wrote").last_index.0)
        .sum();
    assert_eq!(last_total, 300);
    let compacted_any = states
        .iter()
        .any(|state| state.is_some_and(|state| state.compacted_index.0 > 0));
    assert!(compacted_any);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn timed_load_reports_its_window() {
    let dir = test_dir("timed");
    let config = small_config(&dir);
    let spec = LoadSpec {
        entry_bytes: 16,
        appenders: 2,
        entries_per_submit: 1,
        compact_every_entries: 0,
        compact_every_bytes: 0,
        payload: PayloadKind::Constant,
    };
    let executor = glommio::LocalExecutorBuilder::default().make().unwrap();

    let outcome = executor.run(async {
        let log = DiskLog::open(&config, IDENTITY).await.unwrap();
        let outcome = load::run_timed(
            &log,
            spec,
            Warmup::fixed(Duration::from_millis(20)),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        log.close().await.unwrap();
        outcome
    });

    assert!(outcome.elapsed >= Duration::from_millis(100));
    assert!(outcome.entries >= 1);
    // Each appender has one submission of one entry outstanding, so a write carries at
    // most one entry per appender.
    assert!(outcome.syncs >= 1);
    assert!(outcome.entries <= 2 * outcome.syncs, "{outcome:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn warmup_lasts_until_segments_are_reused() {
    let dir = test_dir("steady");
    // 1 MiB segments fill within a few hundred milliseconds, and compacting every 16
    // entries lets old segments retire, so that rotations reuse them.
    let config = small_config(&dir);
    let spec = LoadSpec {
        entry_bytes: 4096,
        appenders: 8,
        entries_per_submit: 4,
        compact_every_entries: 16,
        compact_every_bytes: 0,
        payload: PayloadKind::Constant,
    };
    // The minimum lets the write rate settle: it decides whether the load would rotate.
    let warmup = Warmup {
        min: Duration::from_millis(100),
        max: Duration::from_secs(20),
    };
    let executor = glommio::LocalExecutorBuilder::default().make().unwrap();

    let (outcome, stats) = executor.run(async {
        let log = DiskLog::open(&config, IDENTITY).await.unwrap();
        // Any rate above 1 MiB/s rotates the 1 MiB segments within a measured second.
        let outcome = load::run_timed(&log, spec, warmup, Duration::from_secs(1))
            .await
            .unwrap();
        let stats = log.stats();
        log.close().await.unwrap();
        (outcome, stats)
    });

    // The first reuse comes only after several rotations, well after the minimum.
    assert!(outcome.warmup > warmup.min, "{:?}", outcome.warmup);
    assert!(outcome.warmup < warmup.max, "{:?}", outcome.warmup);
    assert!(outcome.segments_recycled_at_start >= 1, "{outcome:?}");
    assert!(stats.segments_created >= 1, "{stats:?}");
    assert!(outcome.rotations >= outcome.segments_new, "{outcome:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn warmup_stops_at_minimum_without_rotations() {
    let dir = test_dir("short");
    let config = LogConfig {
        segment_bytes: 8 << 20,
        ..small_config(&dir)
    };
    // One appender of 16-byte entries writes far less than a segment in the measured part.
    let spec = LoadSpec {
        entry_bytes: 16,
        appenders: 1,
        entries_per_submit: 1,
        compact_every_entries: 0,
        compact_every_bytes: 0,
        payload: PayloadKind::Constant,
    };
    let warmup = Warmup {
        min: Duration::from_millis(50),
        max: Duration::from_secs(20),
    };
    let executor = glommio::LocalExecutorBuilder::default().make().unwrap();

    let outcome = executor.run(async {
        let log = DiskLog::open(&config, IDENTITY).await.unwrap();
        let outcome = load::run_timed(&log, spec, warmup, Duration::from_millis(100))
            .await
            .unwrap();
        log.close().await.unwrap();
        outcome
    });

    assert!(outcome.warmup >= warmup.min, "{:?}", outcome.warmup);
    assert!(
        outcome.warmup < Duration::from_secs(5),
        "{:?}",
        outcome.warmup
    );
    assert_eq!(outcome.rotations, 0);
    assert_eq!(outcome.segments_new, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn device_probe_rounds_writes_to_blocks() {
    let dir = test_dir("device");
    let executor = glommio::LocalExecutorBuilder::default().make().unwrap();

    let (sample, leftover) = executor.run(async {
        let probe = DeviceProbe::create(&dir, 1 << 20, PayloadKind::Random)
            .await
            .unwrap();
        let sample = probe
            .measure(5000, Duration::from_millis(20))
            .await
            .unwrap();
        probe.remove().await.unwrap();
        (sample, dir.join("device-probe.dat").exists())
    });

    assert_eq!(sample.write_bytes, 2 * BLOCK_BYTES);
    assert!(sample.ops >= 1);
    assert_eq!(sample.latency.samples, sample.ops);
    assert!(!leftover);
    std::fs::remove_dir_all(&dir).unwrap();
}
