//! Recovery of the disk log after a crash. A damaged final batch is truncated, and the log
//! recovers exactly the batches before it. Damage to any batch that a later valid batch
//! follows stops the open with `Corrupt` and changes no file.

mod log_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use log_support::{
    GroupSnapshot, IDENTITY, TestDir, entries, entry, hard_state, payload, small_config, snapshot,
};
use shardraft::log::format::{self, BATCH_HEADER_BYTES, BLOCK_BYTES, align_up};
use shardraft::log::{
    BatchNumber, DiskLog, GroupId, LogConfig, LogIdentity, LogStore, MemoryLog, StorageError,
    WriteBatch,
};
use shardraft::raft::{LogIndex, Term};

const A: GroupId = GroupId(1);
const B: GroupId = GroupId(2);
const C: GroupId = GroupId(3);
const D: GroupId = GroupId(4);

type Snapshot = Vec<(GroupId, GroupSnapshot)>;

/// Where one batch lies in a segment file.
#[derive(Clone, Copy, Debug)]
struct BatchExtent {
    offset: u64,
    /// End of the header and records.
    end: u64,
    /// End of the block padding after the records.
    padded_end: u64,
}

/// The batches of a segment file, found by walking its headers from the first block.
fn batches_in(bytes: &[u8]) -> Vec<BatchExtent> {
    let mut batches = Vec::new();
    let mut offset = BLOCK_BYTES;
    while offset as usize + BATCH_HEADER_BYTES <= bytes.len() {
        let Ok(header) = format::decode_batch_header(&bytes[offset as usize..]) else {
            break;
        };
        let end = offset + header.batch_bytes();
        batches.push(BatchExtent {
            offset,
            end,
            padded_end: align_up(end),
        });
        offset = align_up(end);
    }
    batches
}

/// The files of a shard directory, by name.
type DirImage = BTreeMap<String, Vec<u8>>;

fn capture(dir: &Path) -> DirImage {
    let mut image = DirImage::new();
    for item in std::fs::read_dir(dir).expect("listing the shard directory") {
        let path = item.expect("listing the shard directory").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        image.insert(name, std::fs::read(&path).expect("reading a log file"));
    }
    image
}

fn restore(dir: &Path, image: &DirImage) {
    for item in std::fs::read_dir(dir).expect("listing the shard directory") {
        let path = item.expect("listing the shard directory").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !image.contains_key(&name) {
            std::fs::remove_file(&path).expect("removing a file the image lacks");
        }
    }
    for (name, bytes) in image {
        std::fs::write(dir.join(name), bytes).expect("restoring a log file");
    }
}

/// The state of a log after exactly `batches`, computed by the memory log.
async fn model(batches: &[WriteBatch]) -> Snapshot {
    let log = MemoryLog::new(&LogConfig::default());
    for batch in batches {
        log.submit(batch.clone())
            .expect("the model accepts every batch");
    }
    snapshot(&log).await
}

async fn submit_durably(log: &DiskLog, batch: WriteBatch) {
    let number = log.submit(batch).expect("submitting");
    let durable = log
        .wait_durable(BatchNumber(number.0 - 1))
        .await
        .expect("waiting for durability");
    assert!(durable >= number, "batch {number:?} is not durable");
}

/// A log of a few synced batches and a final one of about 1 KiB, closed, with its files
/// captured so that every damage starts from the same bytes.
struct Scenario {
    _dir: TestDir,
    config: LogConfig,
    shard_dir: PathBuf,
    image: DirImage,
    segment: PathBuf,
    batches: Vec<BatchExtent>,
    prefix: Vec<WriteBatch>,
    final_batch: WriteBatch,
}

fn prefix_batches() -> Vec<WriteBatch> {
    (0..6u64)
        .map(|round| {
            let mut batch = WriteBatch::new();
            batch.append(A, entries(A, 3 * round + 1, 3 * round + 3, 1));
            batch.set_hard_state(A, hard_state(1, Some(1), 3 * round));
            if round % 2 == 0 {
                batch.append(B, entries(B, round / 2 + 1, round / 2 + 1, 1));
            }
            // Group D receives a snapshot far past its log, and appends after it.
            match round {
                1 => batch.append(D, entries(D, 1, 2, 1)),
                3 => batch.install_snapshot(D, LogIndex(40), Term(2)),
                4 => batch.append(D, entries(D, 41, 42, 2)),
                _ => &mut batch,
            };
            batch
        })
        .collect()
}

fn final_batch() -> WriteBatch {
    let mut batch = WriteBatch::new();
    let data = (19..=22).map(|index| entry(index, 2, payload(A, index, 2, 200)));
    batch.append(A, data.collect());
    batch.set_hard_state(A, hard_state(2, Some(2), 18));
    batch.set_hard_state(B, hard_state(2, None, 1));
    // A snapshot inside B's log, whose term conflicts with B's entry 2: lost with the rest
    // of the batch when the batch is torn.
    batch.install_snapshot(B, LogIndex(2), Term(2));
    batch.append(C, vec![entry(1, 2, payload(C, 1, 2, 100))]);
    batch
}

/// The batch written after a recovery, to show the log accepts writes again.
fn after_recovery_batch() -> WriteBatch {
    let group = GroupId(9);
    let mut batch = WriteBatch::new();
    batch.append(group, entries(group, 1, 2, 5));
    batch.set_hard_state(group, hard_state(5, Some(3), 2));
    batch
}

async fn build_scenario(name: &str) -> Scenario {
    let dir = TestDir::new(name);
    let config = small_config(&dir.path);
    let log = DiskLog::open(&config, IDENTITY).await.expect("opening");
    let prefix = prefix_batches();
    for batch in &prefix {
        submit_durably(&log, batch.clone()).await;
    }
    let final_batch = final_batch();
    submit_durably(&log, final_batch.clone()).await;
    let segment = log.segment_paths().last().cloned().expect("a segment");
    log.close().await.expect("closing");

    let shard_dir = dir.shard_dir();
    let image = capture(&shard_dir);
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    let batches = batches_in(&image[&name]);
    // The checkpoint that opens the segment, the prefix and the final batch.
    assert_eq!(
        batches.len(),
        prefix.len() + 2,
        "batches found in {segment:?}"
    );
    let last = batches[batches.len() - 1];
    let final_bytes = last.end - last.offset;
    assert!(
        (900..2000).contains(&final_bytes),
        "the final batch has {final_bytes} bytes, not about 1 KiB"
    );
    Scenario {
        _dir: dir,
        config,
        shard_dir,
        image,
        segment,
        batches,
        prefix,
        final_batch,
    }
}

impl Scenario {
    fn final_extent(&self) -> BatchExtent {
        self.batches[self.batches.len() - 1]
    }

    fn segment_bytes(&self) -> Vec<u8> {
        let name = self.segment.file_name().unwrap().to_string_lossy();
        self.image[name.as_ref()].clone()
    }

    fn with_final(&self) -> Vec<WriteBatch> {
        let mut batches = self.prefix.clone();
        batches.push(self.final_batch.clone());
        batches
    }

    /// Writes `damaged` over the segment after restoring every other file, reopens and
    /// checks that the log holds the prefix, or also the final batch if `damaged` left the
    /// final batch's bytes intact. With `write_after`, it then writes a batch, restarts
    /// and checks that batch too.
    async fn expect_recovery(&self, case: &str, damaged: &[u8], write_after: bool) {
        restore(&self.shard_dir, &self.image);
        std::fs::write(&self.segment, damaged).expect("writing the damaged segment");
        let extent = self.final_extent();
        let original = self.segment_bytes();
        let range = extent.offset as usize..extent.end as usize;
        let intact = damaged.get(range.clone()) == Some(&original[range]);
        let mut batches = if intact {
            self.with_final()
        } else {
            self.prefix.clone()
        };

        let log = DiskLog::open(&self.config, IDENTITY)
            .await
            .unwrap_or_else(|error| panic!("{case}: reopening failed: {error}"));
        let expected = model(&batches).await;
        let found = snapshot(&log).await;
        assert!(
            found == expected,
            "{case}: recovered state differs from the durable prefix (final batch intact: \
             {intact})"
        );
        if !write_after {
            log.close().await.expect("closing");
            return;
        }
        let batch = after_recovery_batch();
        submit_durably(&log, batch.clone()).await;
        log.close().await.expect("closing");
        batches.push(batch);
        let log = DiskLog::open(&self.config, IDENTITY)
            .await
            .unwrap_or_else(|error| panic!("{case}: second reopen failed: {error}"));
        assert!(
            snapshot(&log).await == model(&batches).await,
            "{case}: a batch written after recovery is missing after a restart"
        );
        log.close().await.expect("closing");
    }
}

fn run(future: impl Future<Output = ()>) {
    log_support::run(future);
}

/// A tiny deterministic generator, so that failures reproduce from the test alone.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[test]
fn final_batch_cut_at_every_offset_is_truncated() {
    run(async {
        let scenario = build_scenario("cut-at-every-offset").await;
        let extent = scenario.final_extent();
        let original = scenario.segment_bytes();
        for cut in extent.offset..extent.padded_end {
            let mut damaged = original.clone();
            damaged[cut as usize..].fill(0);
            let write_after = cut < extent.offset + 40 || cut % 97 == 0;
            let case = format!("zeroed from offset {cut}");
            scenario.expect_recovery(&case, &damaged, write_after).await;
        }
    });
}

#[test]
fn final_batch_truncated_by_set_len_is_truncated() {
    run(async {
        let scenario = build_scenario("truncated-by-set-len").await;
        let extent = scenario.final_extent();
        let original = scenario.segment_bytes();
        let cuts = (extent.offset..extent.padded_end)
            .filter(|cut| *cut < extent.offset + 40 || cut % 7 == 0 || *cut >= extent.end - 2);
        for cut in cuts {
            let damaged = &original[..cut as usize];
            let case = format!("file cut to {cut} bytes");
            scenario.expect_recovery(&case, damaged, cut % 5 == 0).await;
        }
    });
}

#[test]
fn final_batch_with_random_damage_is_truncated() {
    run(async {
        let scenario = build_scenario("random-damage").await;
        let extent = scenario.final_extent();
        let original = scenario.segment_bytes();
        let span = extent.padded_end - extent.offset;
        let mut random = SplitMix(7);
        for round in 0..300 {
            let mut damaged = original.clone();
            let start = extent.offset + random.below(span);
            let len = 1 + random.below(600).min(extent.padded_end - start - 1);
            let kind = random.below(3);
            for at in start..start + len {
                damaged[at as usize] = match kind {
                    0 => 0,
                    1 => random.next() as u8,
                    _ => damaged[at as usize] ^ 0xff,
                };
            }
            if kind == 0 && random.below(2) == 0 {
                damaged.truncate((start + len) as usize);
            }
            let case = format!("round {round}: kind {kind} over {len} bytes at {start}");
            scenario
                .expect_recovery(&case, &damaged, round % 10 == 0)
                .await;
        }
    });
}

#[test]
fn final_batch_with_flipped_bit_is_truncated() {
    run(async {
        let scenario = build_scenario("flipped-bit").await;
        let extent = scenario.final_extent();
        let original = scenario.segment_bytes();
        let mut random = SplitMix(11);
        // Every bit of the header, then one random bit of every byte of the records.
        let header_bits = (0..BATCH_HEADER_BYTES as u64 * 8).map(|bit| (extent.offset, bit));
        let record_bits: Vec<_> = (extent.offset + BATCH_HEADER_BYTES as u64..extent.end)
            .map(|at| (at, random.below(8)))
            .collect();
        let flips: Vec<(u64, u64)> = header_bits
            .map(|(base, bit)| (base + bit / 8, bit % 8))
            .chain(record_bits)
            .collect();
        for (position, (at, bit)) in flips.into_iter().enumerate() {
            let mut damaged = original.clone();
            damaged[at as usize] ^= 1 << bit;
            let case = format!("bit {bit} of byte {at} flipped");
            scenario
                .expect_recovery(&case, &damaged, position % 50 == 0)
                .await;
        }
    });
}

#[test]
fn final_batch_with_zeroed_tail_is_truncated() {
    run(async {
        let scenario = build_scenario("zeroed-tail").await;
        let extent = scenario.final_extent();
        let original = scenario.segment_bytes();
        // Each 512-byte sector alone, as a torn write that lost one sector would leave it.
        for sector in (extent.offset..extent.padded_end).step_by(512) {
            let mut damaged = original.clone();
            damaged[sector as usize..sector as usize + 512].fill(0);
            let case = format!("sector at {sector} zeroed");
            scenario.expect_recovery(&case, &damaged, true).await;
        }
        // The last bytes of the records.
        for tail in [1u64, 2, 8, 31, 32, 33, 100, 500] {
            let mut damaged = original.clone();
            damaged[(extent.end - tail) as usize..extent.end as usize].fill(0);
            let case = format!("last {tail} bytes of the records zeroed");
            scenario.expect_recovery(&case, &damaged, true).await;
        }
    });
}

/// A named change to a segment's bytes.
type NamedDamage<'a> = (&'static str, Box<dyn Fn(&mut Vec<u8>) + 'a>);

/// Opens the log, expecting `Corrupt` at `offset` of `path`, and checks that no file of the
/// shard directory changed.
async fn expect_corrupt(
    config: &LogConfig,
    shard_dir: &Path,
    path: &Path,
    offset: u64,
    case: &str,
) {
    let before = capture(shard_dir);
    let result = DiskLog::open(config, IDENTITY).await;
    match result {
        Err(StorageError::Corrupt {
            path: found_path,
            offset: found_offset,
            ..
        }) => {
            assert_eq!(found_path, path, "{case}: Corrupt names the wrong file");
            assert_eq!(
                found_offset, offset,
                "{case}: Corrupt names the wrong offset"
            );
        }
        Err(other) => panic!("{case}: expected Corrupt, got {other}"),
        Ok(_) => panic!("{case}: the log opened despite damage before a valid batch"),
    }
    let after = capture(shard_dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{case}: the failed open added or removed files"
    );
    assert!(before == after, "{case}: the failed open changed a file");
}

#[test]
fn damaged_earlier_batch_is_corrupt() {
    run(async {
        let scenario = build_scenario("damaged-earlier-batch").await;
        let original = scenario.segment_bytes();
        // Every batch but the final one: the checkpoint and the prefix.
        let earlier = &scenario.batches[..scenario.batches.len() - 1];
        for (number, batch) in earlier.iter().enumerate() {
            let damages: [NamedDamage<'_>; 4] = [
                (
                    "header bit flipped",
                    Box::new(|bytes| bytes[batch.offset as usize + 17] ^= 4),
                ),
                (
                    "record bit flipped",
                    Box::new(|bytes| bytes[batch.end as usize - 3] ^= 1),
                ),
                (
                    "header block zeroed",
                    Box::new(|bytes| {
                        bytes[batch.offset as usize..(batch.offset + BLOCK_BYTES) as usize].fill(0)
                    }),
                ),
                (
                    "records zeroed",
                    Box::new(|bytes| {
                        let start = batch.offset as usize + BATCH_HEADER_BYTES;
                        bytes[start..batch.end as usize].fill(0)
                    }),
                ),
            ];
            for (name, damage) in damages {
                if name == "records zeroed" && batch.end == batch.offset + 32 {
                    continue;
                }
                restore(&scenario.shard_dir, &scenario.image);
                let mut damaged = original.clone();
                damage(&mut damaged);
                std::fs::write(&scenario.segment, &damaged).expect("writing the damage");
                let case = format!("batch {number} at {}: {name}", batch.offset);
                expect_corrupt(
                    &scenario.config,
                    &scenario.shard_dir,
                    &scenario.segment,
                    batch.offset,
                    &case,
                )
                .await;
            }
        }
    });
}

/// Rewrites the synced-through field of the batch header at `offset`, with a fresh CRC.
fn set_synced_through(bytes: &mut [u8], offset: u64, synced_through_seq: u64) {
    let header = &mut bytes[offset as usize..offset as usize + BATCH_HEADER_BYTES];
    header[24..32].copy_from_slice(&synced_through_seq.to_le_bytes());
    let crc = crc32fast::hash(&header[8..]);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The writer overlaps a batch's write with the fdatasyncs of the batches before it, so a
/// crash can leave a damaged batch behind complete later ones. When the later batches'
/// headers say the damaged one was not yet synced, none of them was acknowledged: all are
/// truncated, and the log keeps the batches before the damaged one. The damaged batch is
/// each of the second- to the sixth-to-last, as deep as the writer's pipeline reaches: up
/// to five batches unsynced behind the one being placed.
#[test]
fn unsynced_damaged_run_is_truncated() {
    run(async {
        let scenario = build_scenario("damaged-unsynced-run").await;
        let original = scenario.segment_bytes();
        for later_batches in 1..=5 {
            let damaged_position = scenario.batches.len() - 1 - later_batches;
            let damaged_extent = scenario.batches[damaged_position];
            let damaged_seq =
                format::decode_batch_header(&original[damaged_extent.offset as usize..])
                    .expect("the damaged batch's header decodes")
                    .batch_seq;
            let damages: [NamedDamage<'_>; 3] = [
                (
                    "header bit flipped",
                    Box::new(|bytes| bytes[damaged_extent.offset as usize + 17] ^= 4),
                ),
                (
                    "record bit flipped",
                    Box::new(|bytes| bytes[damaged_extent.end as usize - 3] ^= 1),
                ),
                (
                    "header block zeroed",
                    Box::new(|bytes| {
                        let start = damaged_extent.offset as usize;
                        bytes[start..start + BLOCK_BYTES as usize].fill(0)
                    }),
                ),
            ];
            // The scenario's batches are the segment's checkpoint, the prefix, then the
            // final batch, so the prefix batch at `damaged_position - 1` is the damaged one.
            let before_damaged = &scenario.prefix[..damaged_position - 1];
            for (name, damage) in damages {
                let name = format!("{name}, {later_batches} later batches");
                restore(&scenario.shard_dir, &scenario.image);
                let mut damaged = original.clone();
                for later in &scenario.batches[damaged_position + 1..] {
                    set_synced_through(&mut damaged, later.offset, damaged_seq - 1);
                }
                damage(&mut damaged);
                std::fs::write(&scenario.segment, &damaged).expect("writing the damage");

                let log = DiskLog::open(&scenario.config, IDENTITY)
                    .await
                    .unwrap_or_else(|error| panic!("{name}: reopening failed: {error}"));
                assert!(
                    snapshot(&log).await == model(before_damaged).await,
                    "{name}: the log does not hold exactly the batches before the damaged one"
                );
                let batch = after_recovery_batch();
                submit_durably(&log, batch.clone()).await;
                log.close().await.expect("closing");
                let mut batches = before_damaged.to_vec();
                batches.push(batch);
                let log = DiskLog::open(&scenario.config, IDENTITY)
                    .await
                    .unwrap_or_else(|error| panic!("{name}: second reopen failed: {error}"));
                assert!(
                    snapshot(&log).await == model(&batches).await,
                    "{name}: a batch written after recovery is missing after a restart"
                );
                log.close().await.expect("closing");
            }
        }
    });
}

/// The same damage behind a final batch whose header says the damaged batch was synced
/// is damage inside acknowledged data.
#[test]
fn synced_damaged_pair_is_corrupt() {
    run(async {
        let scenario = build_scenario("damaged-synced-pair").await;
        let mut damaged = scenario.segment_bytes();
        let penultimate = scenario.batches[scenario.batches.len() - 2];
        let last = scenario.final_extent();
        let penultimate_seq = format::decode_batch_header(&damaged[penultimate.offset as usize..])
            .expect("the penultimate header decodes")
            .batch_seq;
        set_synced_through(&mut damaged, last.offset, penultimate_seq);
        damaged[penultimate.end as usize - 3] ^= 1;
        restore(&scenario.shard_dir, &scenario.image);
        std::fs::write(&scenario.segment, &damaged).expect("writing the damage");
        expect_corrupt(
            &scenario.config,
            &scenario.shard_dir,
            &scenario.segment,
            penultimate.offset,
            "record bit flipped behind a batch written after its sync",
        )
        .await;
    });
}

/// A log of several segments, closed. Returns the directory, config and segment paths.
async fn build_segments(name: &str) -> (TestDir, LogConfig, Vec<PathBuf>) {
    let dir = TestDir::new(name);
    let config = small_config(&dir.path);
    let log = DiskLog::open(&config, IDENTITY).await.expect("opening");
    for index in 1..=150u64 {
        let mut batch = WriteBatch::new();
        batch.append(A, vec![entry(index, 1, payload(A, index, 1, 1500))]);
        batch.set_hard_state(A, hard_state(1, Some(1), index - 1));
        submit_durably(&log, batch).await;
    }
    let segments = log.segment_paths();
    log.close().await.expect("closing");
    assert!(
        segments.len() >= 3,
        "only {} segments were written",
        segments.len()
    );
    (dir, config, segments)
}

/// A segment prepared by recycling keeps the batches of its earlier use, all older than the
/// log's end. They prove nothing about a torn final batch before them, which is truncated.
#[test]
fn torn_tail_before_recycled_segment_is_truncated() {
    run(async {
        let (_dir, config, segments) = build_segments("torn-before-recycled").await;
        let read = |path: &PathBuf| std::fs::read(path).expect("reading a segment");
        let active = segments.last().expect("an active segment");
        let mut torn = read(active);
        let last = *batches_in(&torn)
            .last()
            .expect("batches in the active segment");
        torn[last.end as usize - 1] ^= 0x10;
        std::fs::write(active, &torn).expect("writing the damage");

        // The next segment, as recycling leaves it: a fresh header over the old batches of
        // the first segment.
        let next_seq = segments.len() as u64 + 1;
        let mut recycled = read(&segments[0]);
        let header = format::SegmentHeader {
            format_version: format::FORMAT_VERSION,
            cluster_id: IDENTITY.cluster_id,
            node_id: IDENTITY.node_id,
            shard: IDENTITY.shard,
            segment_seq: next_seq,
        };
        recycled[..BLOCK_BYTES as usize].fill(0);
        format::encode_segment_header(&header, &mut recycled);
        let extension = active.extension().expect("segments have an extension");
        let next_path = active
            .with_file_name(format!("{next_seq:020}"))
            .with_extension(extension);
        std::fs::write(&next_path, &recycled).expect("writing the recycled segment");

        let log = DiskLog::open(&config, IDENTITY)
            .await
            .unwrap_or_else(|error| panic!("the torn tail was not truncated: {error}"));
        let state = log.group_state(A).expect("group A");
        assert_eq!(state.last_index.0, 149, "only the torn final entry is lost");
        log.close().await.expect("closing");
    });
}

/// A recycled segment keeps data of its earlier use after its last batch, which may read
/// as a damaged batch. When the next segment starts with the next batch, that data is the
/// segment's unused end and every entry is recovered.
/// Entries of group A written by [`write_large_entries`], one per batch.
const LARGE_ENTRIES: u64 = 30;

/// Writes [`LARGE_ENTRIES`] entries of three blocks each, one per batch, and closes the log.
/// Four such batches fill a segment after its checkpoint and leave two free blocks at its
/// end. Returns the directory, the config and the segment paths, at least three.
async fn write_large_entries(name: &str) -> (TestDir, LogConfig, Vec<PathBuf>) {
    let dir = TestDir::new(name);
    let config = small_config(&dir.path);
    let log = DiskLog::open(&config, IDENTITY).await.expect("opening");
    for index in 1..=LARGE_ENTRIES {
        let mut batch = WriteBatch::new();
        batch.append(A, vec![entry(index, 1, payload(A, index, 1, 9_000))]);
        submit_durably(&log, batch).await;
    }
    let segments = log.segment_paths();
    log.close().await.expect("closing");
    assert!(segments.len() >= 3, "only {} segments", segments.len());
    (dir, config, segments)
}

#[test]
fn stale_tail_of_recycled_segment_is_its_end() {
    run(async {
        let (_dir, config, segments) = write_large_entries("stale-recycled-tail").await;
        let middle = &segments[1];
        let mut bytes = std::fs::read(middle).expect("reading a segment");
        let last = *batches_in(&bytes)
            .last()
            .expect("batches in the middle segment");
        let end = last.padded_end as usize;
        assert!(
            end < bytes.len(),
            "the segment has room after its last batch"
        );
        // Payload bytes of an earlier use: neither zeros nor a batch header.
        bytes[end..].fill(0x2e);
        std::fs::write(middle, &bytes).expect("writing the stale tail");

        let log = DiskLog::open(&config, IDENTITY)
            .await
            .unwrap_or_else(|error| panic!("the stale tail was taken for damage: {error}"));
        let state = log.group_state(A).expect("group A");
        assert_eq!(
            state.last_index.0, LARGE_ENTRIES,
            "every entry is recovered"
        );
        log.close().await.expect("closing");
    });
}

/// A segment's checkpoint and its first batch share one fdatasync, so a crash can leave the
/// checkpoint torn and the first batch whole. The first batch's header says the checkpoint
/// was not synced, so both are an unacknowledged tail: recovery ends the log with the
/// segment before, whether that segment's end is zeros or stale bytes of an earlier use.
#[test]
fn torn_checkpoint_before_whole_first_batch_is_truncated() {
    run(async {
        let (dir, config, segments) = write_large_entries("torn-checkpoint").await;
        let shard_dir = dir.shard_dir();
        let image = capture(&shard_dir);
        let newest = segments.last().expect("a newest segment");
        let previous = &segments[segments.len() - 2];
        let newest_bytes = std::fs::read(newest).expect("reading the newest segment");
        let newest_batches = batches_in(&newest_bytes);
        assert!(
            newest_batches.len() >= 2,
            "the newest segment holds {} batches, not a checkpoint and a batch",
            newest_batches.len()
        );
        let (checkpoint, first) = (newest_batches[0], newest_batches[1]);
        // Each batch after the checkpoint contains one entry.
        let entries_before_newest = LARGE_ENTRIES - (newest_batches.len() as u64 - 1);

        for stale_previous_tail in [false, true] {
            restore(&shard_dir, &image);
            let mut torn = newest_bytes.clone();
            torn[first.padded_end as usize..].fill(0);
            torn[checkpoint.end as usize - 1] ^= 0x10;
            std::fs::write(newest, &torn).expect("tearing the checkpoint");
            if stale_previous_tail {
                let mut bytes = std::fs::read(previous).expect("reading a segment");
                let last = *batches_in(&bytes).last().expect("batches in the segment");
                // Payload bytes of an earlier use: neither zeros nor a batch header.
                bytes[last.padded_end as usize..].fill(0x2e);
                std::fs::write(previous, &bytes).expect("writing the stale tail");
            }

            let case = if stale_previous_tail {
                "after a stale tail"
            } else {
                "after a zeroed tail"
            };
            let log = DiskLog::open(&config, IDENTITY)
                .await
                .unwrap_or_else(|error| {
                    panic!("{case}: the torn checkpoint stopped recovery: {error}")
                });
            let state = log.group_state(A).expect("group A");
            assert_eq!(
                state.last_index.0, entries_before_newest,
                "{case}: recovery must end with the segment before the torn checkpoint"
            );
            // The log goes on from there.
            let mut batch = WriteBatch::new();
            let next = entries_before_newest + 1;
            batch.append(A, vec![entry(next, 1, payload(A, next, 1, 9_000))]);
            submit_durably(&log, batch).await;
            log.close().await.expect("closing");
        }
    });
}

#[test]
fn damage_before_a_later_segment_is_corrupt() {
    run(async {
        let (dir, config, segments) = build_segments("damage-before-later-segment").await;
        let shard_dir = dir.shard_dir();
        let image = capture(&shard_dir);
        let read = |path: &PathBuf| std::fs::read(path).expect("reading a segment");

        // The last batch of the first segment, with valid batches in the segments after.
        let first = read(&segments[0]);
        let last = *batches_in(&first)
            .last()
            .expect("batches in the first segment");
        let mut damaged = first.clone();
        damaged[last.end as usize - 1] ^= 0x10;
        std::fs::write(&segments[0], &damaged).expect("writing the damage");
        let case = "last batch of the first segment flipped";
        expect_corrupt(&config, &shard_dir, &segments[0], last.offset, case).await;

        // Also with every batch of the second segment zeroed, so that only the third one
        // proves the damage was synced: the second must not be removed as unused.
        let second = read(&segments[1]);
        let mut emptied = second.clone();
        emptied[BLOCK_BYTES as usize..].fill(0);
        std::fs::write(&segments[1], &emptied).expect("zeroing the second segment");
        let case = "first segment damaged, second emptied";
        expect_corrupt(&config, &shard_dir, &segments[0], last.offset, case).await;

        restore(&shard_dir, &image);
        let log = DiskLog::open(&config, IDENTITY)
            .await
            .expect("the undamaged log opens");
        let state = log.group_state(A).expect("group A");
        assert_eq!(
            state.last_index.0, 150,
            "every entry is recovered without damage"
        );
        log.close().await.expect("closing");
    });
}

#[test]
fn missing_middle_segment_is_reported() {
    run(async {
        let (_dir, config, segments) = build_segments("missing-middle-segment").await;
        std::fs::remove_file(&segments[1]).expect("removing the middle segment");
        match DiskLog::open(&config, IDENTITY).await {
            Err(StorageError::SegmentMissing { path }) => {
                assert_eq!(path, segments[1], "SegmentMissing names the wrong segment");
            }
            Err(other) => panic!("expected SegmentMissing, got {other}"),
            Ok(_) => panic!("the log opened without its middle segment"),
        }
    });
}

#[test]
fn missing_oldest_segment_without_compaction_is_corrupt() {
    run(async {
        let (_dir, config, segments) = build_segments("missing-oldest-segment").await;
        let before = file_bytes(&segments);
        std::fs::remove_file(&segments[0]).expect("removing the oldest segment");
        match DiskLog::open(&config, IDENTITY).await {
            Err(StorageError::Corrupt { detail, .. }) => {
                assert!(
                    detail.contains("missing"),
                    "the error says what is missing: {detail}"
                );
            }
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("the log opened without the entries of its oldest segment"),
        }
        let after = file_bytes(&segments[1..]);
        assert_eq!(
            after,
            before[1..],
            "a failed open changed the remaining segments"
        );
    });
}

#[test]
fn interrupted_recycling_leaves_the_log_intact() {
    run(async {
        let (dir, config, segments) = build_segments("interrupted-recycling").await;
        let log = DiskLog::open(&config, IDENTITY).await.expect("opening");
        let expected = snapshot(&log).await;
        log.close().await.expect("closing");
        // A crash after a retired segment was renamed out of the log, before its new name.
        let parked = dir.shard_dir().join("00000000000000000099.recycling");
        std::fs::copy(&segments[0], &parked).expect("placing a parked segment");

        let log = DiskLog::open(&config, IDENTITY).await.expect("reopening");

        assert_eq!(
            snapshot(&log).await,
            expected,
            "contents after the interrupted recycling"
        );
        assert!(!parked.exists(), "the parked segment was not removed");
        log.close().await.expect("closing");
    });
}

#[test]
fn segment_of_another_node_is_rejected() {
    run(async {
        let (dir, config, segments) = build_segments("segment-of-another-node").await;
        let other = LogIdentity {
            node_id: IDENTITY.node_id + 1,
            ..IDENTITY
        };
        match DiskLog::open(&config, other).await {
            Err(StorageError::IdentityMismatch {
                expected, found, ..
            }) => {
                assert_eq!(expected, other, "expected identity");
                assert_eq!(found, IDENTITY, "found identity");
            }
            Err(other) => panic!("expected IdentityMismatch, got {other}"),
            Ok(_) => panic!("another node opened this node's log"),
        }

        // A segment copied from another cluster's directory, with this node's identity
        // file in place.
        let foreign_dir = TestDir::new("segment-of-another-node-foreign");
        let foreign_config = small_config(&foreign_dir.path);
        let foreign = LogIdentity {
            cluster_id: IDENTITY.cluster_id + 1,
            ..IDENTITY
        };
        let log = DiskLog::open(&foreign_config, foreign)
            .await
            .expect("opening");
        submit_durably(&log, after_recovery_batch()).await;
        let foreign_segment = log.segment_paths()[0].clone();
        log.close().await.expect("closing");
        let last = segments.last().expect("a segment");
        std::fs::copy(&foreign_segment, last).expect("copying the foreign segment");
        match DiskLog::open(&config, IDENTITY).await {
            Err(StorageError::IdentityMismatch { path, found, .. }) => {
                assert_eq!(&path, last, "IdentityMismatch names the wrong segment");
                assert_eq!(found, foreign, "found identity");
            }
            Err(other) => panic!("expected IdentityMismatch, got {other}"),
            Ok(_) => panic!("the log opened with another cluster's segment"),
        }

        std::fs::remove_file(dir.shard_dir().join("identity")).expect("removing identity");
        match DiskLog::open(&config, IDENTITY).await {
            Err(StorageError::IdentityMissing { path }) => {
                assert_eq!(path, dir.shard_dir(), "IdentityMissing names the directory");
            }
            Err(other) => panic!("expected IdentityMissing, got {other}"),
            Ok(_) => panic!("the log opened segments without an identity file"),
        }
    });
}

fn file_bytes(paths: &[std::path::PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|path| std::fs::read(path).expect("reading a segment"))
        .collect()
}

/// Rewrites the header of the segment at `path` as format version `format_version` would
/// have written it.
fn set_segment_version(path: &Path, format_version: u32) {
    let mut bytes = std::fs::read(path).expect("reading a segment");
    let header = format::decode_segment_header(&bytes).expect("a valid segment header");
    let header = format::SegmentHeader {
        format_version,
        ..header
    };
    format::encode_segment_header(&header, &mut bytes);
    std::fs::write(path, &bytes).expect("rewriting the segment header");
}

/// A log written in format version 2, the version before the install-snapshot record,
/// opens unchanged. The first batch after that goes to a new segment of the current
/// version, so that a reader of version 2 never meets a record it does not know.
#[test]
fn version_2_segments_are_read_and_never_extended() {
    run(async {
        let dir = TestDir::new("version-2-segments");
        let config = small_config(&dir.path);
        let log = DiskLog::open(&config, IDENTITY).await.expect("opening");
        let mut batches = prefix_batches();
        for batch in &batches {
            submit_durably(&log, batch.clone()).await;
        }
        let old_segments = log.segment_paths();
        log.close().await.expect("closing");
        drop(log);
        // The segment prepared ahead of use is part of the log too.
        let mut old_segments: Vec<PathBuf> = std::fs::read_dir(dir.shard_dir())
            .expect("listing the shard directory")
            .map(|item| item.expect("listing the shard directory").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
            .chain(old_segments)
            .collect();
        old_segments.sort();
        old_segments.dedup();
        for path in &old_segments {
            set_segment_version(path, 2);
        }
        let old_bytes = file_bytes(&old_segments);

        let log = DiskLog::open(&config, IDENTITY)
            .await
            .unwrap_or_else(|error| panic!("a version 2 log did not open: {error}"));
        assert!(
            snapshot(&log).await == model(&batches).await,
            "contents of the version 2 log"
        );
        let mut batch = WriteBatch::new();
        batch.install_snapshot(A, LogIndex(100), Term(3));
        batch.append(A, entries(A, 101, 102, 3));
        submit_durably(&log, batch.clone()).await;
        batches.push(batch);
        let new_segment = log.segment_paths().last().cloned().expect("a segment");
        log.close().await.expect("closing");

        assert_eq!(
            file_bytes(&old_segments),
            old_bytes,
            "a version 2 segment was written to"
        );
        assert!(
            !old_segments.contains(&new_segment),
            "the batch went to a version 2 segment"
        );
        let new_bytes = std::fs::read(&new_segment).expect("reading the new segment");
        let header = format::decode_segment_header(&new_bytes).expect("a valid header");
        assert_eq!(
            header.format_version,
            format::FORMAT_VERSION,
            "version of the new segment"
        );
        let log = DiskLog::open(&config, IDENTITY).await.expect("reopening");
        assert!(
            snapshot(&log).await == model(&batches).await,
            "contents after the snapshot install"
        );
        log.close().await.expect("closing");
    });
}
