//! A fixed load of closed-loop appenders against a disk log, without criterion, for
//! profiling the log (`perf record -g`) and for looking at stalls.
//!
//! Arguments, each optional: entry bytes (16), appenders (256), entries per submission (64),
//! seconds (5), entries between compactions of each group (4096, 0 for no limit), the data
//! directory, the segment size in bytes (the log's default) and payload bytes between
//! compactions of each group (262144, 0 for no limit), and the payload bytes, `random` or
//! `constant` (random). Besides the load's figures
//! it prints the segment rotations and recycling, the gaps between consecutive
//! fdatasync completions, sampled by a task that polls the log's counters every 200 us, and
//! how late that task's own timer fired, which shows the executor being busy.
//!
//! ```sh
//! cargo build --release -p shardraft-bench --example log_appenders
//! target/release/examples/log_appenders 16 256 64 5
//! ```

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shardraft::log::{DiskLog, LogConfig, LogIdentity, LogStore};
use shardraft_bench::wal::load::{self, LoadSpec};
use shardraft_bench::wal::payload::PayloadKind;
use shardraft_bench::wal::{LatencySummary, environment, new_latency_histogram};

/// Interval at which the monitor task polls the log's counters.
const POLL_INTERVAL: Duration = Duration::from_micros(200);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |at: usize, default: usize| -> anyhow::Result<usize> {
        args.get(at).map_or(Ok(default), |text| {
            text.parse()
                .with_context(|| format!("argument {} ({text:?}) is not a number", at + 1))
        })
    };
    let spec = LoadSpec {
        entry_bytes: number(0, 16)?,
        appenders: number(1, 256)?,
        entries_per_submit: number(2, 64)?,
        compact_every_entries: number(4, 4096)? as u64,
        compact_every_bytes: number(7, 256 * 1024)? as u64,
        payload: match args.get(8).map(String::as_str) {
            None | Some("random") => PayloadKind::Random,
            Some("constant") => PayloadKind::Constant,
            Some(other) => anyhow::bail!("argument 9 ({other:?}) is not random or constant"),
        },
    };
    let seconds = number(3, 5)?;
    let parent = args
        .get(5)
        .map_or_else(environment::default_data_dir, PathBuf::from);
    environment::prepare_data_dir(&parent)?;
    let dir = parent.join(format!("example-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {} failed", dir.display()))?;

    let segment_bytes = match args.get(6) {
        Some(text) => text
            .parse()
            .with_context(|| format!("argument 7 ({text:?}) is not a number"))?,
        None => LogConfig::default().segment_bytes,
    };
    let config = LogConfig {
        data_dir: dir.clone(),
        segment_bytes,
        ..LogConfig::default()
    };
    let identity = LogIdentity {
        cluster_id: 1,
        node_id: 1,
        shard: 0,
    };
    let executor = glommio::LocalExecutorBuilder::default()
        .io_memory(shardraft::log::io_memory_bytes(&config))
        .make()
        .map_err(std::io::Error::from)
        .context("starting the glommio executor failed")?;
    executor.run(async move {
        let log = DiskLog::open(&config, identity)
            .await
            .with_context(|| format!("opening the log in {} failed", dir.display()))?;
        let monitor = Monitor::start(&log);
        let outcome = load::run_timed(
            &log,
            spec,
            load::Warmup::fixed(Duration::from_millis(200)),
            Duration::from_secs(seconds as u64),
        )
        .await?;
        monitor.stop.set(true);
        let stats = log.stats();
        log.close().await.context("closing the log failed")?;
        let per_sync = |total: u64| total as f64 / stats.syncs.max(1) as f64;
        println!(
            "per batch: write {:.0} us, sync {:.0} us (means over {} batches; with O_DSYNC \
             segments the sync is the write itself)",
            per_sync(stats.write_micros_total),
            per_sync(stats.sync_micros_total),
            stats.syncs
        );
        println!(
            "segments: {} rotations, {} recycled, {} retired",
            stats.rotations, stats.segments_recycled, stats.segments_deleted
        );
        let latency = LatencySummary::from_nanos(&outcome.latency_nanos);
        println!("{spec:?}");
        println!(
            "{:.0} entries/s, {:.1} entries per fdatasync, {:.1} KiB per write, thread CPU {:.0}%",
            outcome.entries_per_sec(),
            outcome.entries_per_sync(),
            outcome.write_bytes_mean() / 1024.0,
            outcome.thread_cpu_share().unwrap_or(f64::NAN) * 100.0
        );
        println!("append-to-durable latency: {latency:?}");
        println!(
            "gap between fdatasync completions: {:?}",
            LatencySummary::from_nanos(&monitor.sync_gaps.borrow())
        );
        println!(
            "monitor timer lateness: {:?}",
            LatencySummary::from_nanos(&monitor.timer_lateness.borrow())
        );
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {} failed", dir.display()))
    })
}

/// A task that records the time between fdatasync completions of a log.
struct Monitor {
    stop: Rc<Cell<bool>>,
    sync_gaps: Rc<RefCell<hdrhistogram::Histogram<u64>>>,
    timer_lateness: Rc<RefCell<hdrhistogram::Histogram<u64>>>,
}

impl Monitor {
    fn start(log: &DiskLog) -> Monitor {
        let monitor = Monitor {
            stop: Rc::new(Cell::new(false)),
            sync_gaps: Rc::new(RefCell::new(new_latency_histogram())),
            timer_lateness: Rc::new(RefCell::new(new_latency_histogram())),
        };
        let log = log.clone();
        let stop = Rc::clone(&monitor.stop);
        let gaps = Rc::clone(&monitor.sync_gaps);
        let lateness = Rc::clone(&monitor.timer_lateness);
        glommio::spawn_local(async move {
            let mut syncs = log.stats().syncs;
            let mut last_sync = Instant::now();
            while !stop.get() {
                let before = Instant::now();
                glommio::timer::sleep(POLL_INTERVAL).await;
                let slept = before.elapsed().saturating_sub(POLL_INTERVAL);
                lateness
                    .borrow_mut()
                    .saturating_record(slept.as_nanos() as u64);
                let now = log.stats().syncs;
                if now != syncs {
                    syncs = now;
                    gaps.borrow_mut()
                        .saturating_record(last_sync.elapsed().as_nanos() as u64);
                    last_sync = Instant::now();
                }
            }
        })
        .detach();
        monitor
    }
}
