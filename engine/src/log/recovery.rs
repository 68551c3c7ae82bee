//! Recovery of a shard's log at start: check the directory and its identity, scan every
//! segment, verify every checksum and rebuild each group's log.
//!
//! The flusher overlaps the write of one batch with the fdatasyncs of the few before it. So
//! when a node stops, the last few batches may be unsynced, and any of them may be torn
//! while a later one is complete. Each batch header names the newest batch that was synced
//! when it was written, and damage is judged by the batches that follow it:
//!
//! - nothing valid, or only batches whose header says the damaged batch was not yet synced
//!   when they were written: the damaged batch and everything after it were never
//!   acknowledged, so they are truncated and logged at warn;
//! - a valid batch whose header says the damaged batch had been synced: the damaged batch
//!   may hold acknowledged writes, so recovery stops with [`StorageError::Corrupt`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::{DmaFile, ReadResult};
use shardraft_raft::LogIndex;

use super::disk::{DiskSlot, EntryCache, Location, Placement, Recovered, SegmentFile};
use super::error::glommio_io_error;
use super::format::{
    self, BATCH_HEADER_BYTES, BLOCK_BYTES, DecodedRecord, FORMAT_VERSION, FormatError, Record,
    align_up,
};
use super::group::GroupLog;
use super::segment::{
    SegmentSettings, list_segments, open_for_writes, prepare_segment, segment_path, write_all,
};
use super::{GroupId, LogConfig, LogIdentity, StorageError, identity};

/// Bytes read from a segment per request while scanning.
const SCAN_READ_BYTES: u64 = 1 << 20;

/// Checks `data_dir` and returns the shard's directory inside it, created if needed.
pub(crate) fn prepare_directory(
    data_dir: &Path,
    identity: LogIdentity,
) -> Result<PathBuf, StorageError> {
    if !data_dir.is_dir() {
        return Err(StorageError::DataDirMissing {
            path: data_dir.to_path_buf(),
        });
    }
    check_filesystem(data_dir)?;
    // glommio 0.9 opens directories relative to no directory at all (it passes -1 as the
    // directory descriptor), so a relative path fails with EBADF when the log syncs its
    // directory. The shard directory is made absolute once, here.
    let data_dir = &std::path::absolute(data_dir)
        .map_err(|error| StorageError::from_io("resolving", data_dir, error))?;
    let dir = data_dir.join(format!("shard-{}", identity.shard));
    let not_writable = |source: std::io::Error| StorageError::DataDirNotWritable {
        path: data_dir.to_path_buf(),
        source: Arc::new(source),
    };
    if !dir.is_dir() {
        std::fs::create_dir(&dir).map_err(not_writable)?;
    }
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"").map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)?;
    Ok(dir)
}

/// Rejects filesystems that keep data only in memory: glommio would open files there
/// without O_DIRECT and every fdatasync would return at once without making anything
/// durable.
fn check_filesystem(dir: &Path) -> Result<(), StorageError> {
    use nix::libc::TMPFS_MAGIC;
    // From linux/magic.h; the libc crate does not define it.
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let stat = nix::sys::statfs::statfs(dir).map_err(|errno| {
        StorageError::from_io(
            "inspecting the filesystem of",
            dir,
            std::io::Error::from(errno),
        )
    })?;
    // The width of the magic number differs between targets.
    #[allow(clippy::unnecessary_cast)]
    let magic = stat.filesystem_type().0 as i64;
    let filesystem = match magic {
        #[allow(clippy::unnecessary_cast)]
        kind if kind == TMPFS_MAGIC as i64 => "tmpfs",
        kind if kind == RAMFS_MAGIC => "ramfs",
        _ => return Ok(()),
    };
    Err(StorageError::VolatileFilesystem {
        path: dir.to_path_buf(),
        filesystem,
    })
}

/// Makes glommio learn whether the device of `dir` supports polled I/O before the log
/// opens any segment.
///
/// glommio 0.9 finds out by reading the first block of the first file it opens on a device
/// through its polled ring, and caches the answer for the process. If that file is empty
/// or sparse, the kernel answers the read without asking the device, glommio concludes
/// that polling works, and every later read on a device without poll queues fails with
/// EOPNOTSUPP. So the first DMA open is of a small file whose block is allocated on disk.
pub async fn prime_direct_io(dir: &Path) -> Result<(), StorageError> {
    let path = dir.join(".direct-io-probe");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0xa5; BLOCK_BYTES as usize])?;
        file.sync_all()
    };
    write().map_err(|error| StorageError::from_io("writing", &path, error))?;
    let file = glommio::io::DmaFile::open(&path)
        .await
        .map_err(|error| open_error(&path, error))?;
    let _ = file.close().await;
    std::fs::remove_file(&path).map_err(|error| StorageError::from_io("removing", &path, error))
}

/// Removes segments whose recycling a crash interrupted. They were renamed away from
/// the log before their header was rewritten, and every entry in them was compacted.
fn remove_interrupted_recycling(dir: &Path) -> Result<(), StorageError> {
    let entries =
        std::fs::read_dir(dir).map_err(|error| StorageError::from_io("listing", dir, error))?;
    for entry in entries {
        let path = entry
            .map_err(|error| StorageError::from_io("listing", dir, error))?
            .path();
        if path.extension().and_then(|ext| ext.to_str())
            == Some(super::segment::RECYCLING_EXTENSION)
        {
            tracing::info!(path = %path.display(), "removing a segment left by interrupted recycling");
            std::fs::remove_file(&path)
                .map_err(|error| StorageError::from_io("removing", &path, error))?;
        }
    }
    Ok(())
}

/// Maps the error of opening a segment: EINVAL from an O_DIRECT open means the filesystem
/// does not support direct I/O.
pub(crate) fn open_error(path: &Path, error: glommio::GlommioError<()>) -> StorageError {
    let error = glommio_io_error(error);
    if error.raw_os_error() == Some(nix::libc::EINVAL) {
        return StorageError::DirectIoUnsupported {
            path: path.to_path_buf(),
        };
    }
    StorageError::from_io("opening", path, error)
}

/// Scans the segments of `dir` and rebuilds the log.
pub(crate) async fn recover(
    dir: &Path,
    identity: LogIdentity,
    config: &LogConfig,
) -> Result<Recovered, StorageError> {
    remove_interrupted_recycling(dir)?;
    let listed = list_segments(dir)?;
    // Writing the identity file syncs the file and the directory, which can take hundreds
    // of milliseconds on a slow disk, so it runs off the shard's thread.
    let identity_dir = dir.to_path_buf();
    let has_segments = !listed.is_empty();
    glommio::executor()
        .spawn_blocking(move || identity::check_or_create(&identity_dir, identity, has_segments))
        .await?;
    prime_direct_io(dir).await?;
    for pair in listed.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(StorageError::SegmentMissing {
                path: segment_path(dir, pair[0].0 + 1),
            });
        }
    }

    let write_flags = SegmentSettings::from_config(config).write_flags;
    let mut scan = Scan::new(config);
    let mut remaining = listed.into_iter().peekable();
    while let Some((seq, path)) = remaining.next() {
        let is_last = remaining.peek().is_none();
        let (file, format_version) =
            match open_segment(&path, identity, seq, is_last, write_flags).await? {
                OpenedSegment::Ready {
                    file,
                    format_version,
                } => (file, format_version),
                OpenedSegment::Unfinished(file) => {
                    tracing::warn!(
                        path = %path.display(),
                        "removing a segment whose preparation did not finish"
                    );
                    scan.unused_segments.push((path, file));
                    continue;
                }
            };
        if scan.damage.is_some() {
            if !scan.continues_after_stale_tail(seq, &path, &file).await? {
                scan.check_after_damage(&path, &file).await?;
                continue;
            }
            // The damage was the leftover of a recycled segment's earlier use after its
            // last batch; this segment continues the log.
            scan.damage = None;
        }
        scan.scan_segment(seq, path, file, format_version).await?;
    }

    if let Some((group, gap_end)) = scan.unconfirmed_gaps.first_key_value() {
        let first = scan.segments.values().next();
        return Err(StorageError::Corrupt {
            path: first.map_or_else(|| dir.to_path_buf(), |segment| segment.path.clone()),
            offset: 0,
            detail: format!(
                "entries 1 to {} of group {group} are missing and no compaction record                  covers them; a segment was probably removed by hand",
                gap_end.0
            ),
        });
    }
    scan.remove_unused_segments().await?;
    if let Some(damage) = scan.damage.take() {
        truncate_torn_tail(&damage, &scan.segments).await?;
        scan.active = Some((damage.segment_seq, damage.offset));
    }
    let (active_seq, write_offset) = match scan.active {
        Some(active) => active,
        None => {
            let file =
                prepare_segment(dir, identity, 1, SegmentSettings::from_config(config)).await?;
            scan.segments.insert(
                1,
                empty_segment(1, segment_path(dir, 1), file, FORMAT_VERSION),
            );
            (1, BLOCK_BYTES)
        }
    };
    Ok(Recovered {
        groups: scan.groups,
        cache: scan.cache,
        segments: scan.segments,
        active_seq,
        write_offset,
        next_batch_seq: scan.last_batch_seq.map_or(1, |seq| seq + 1),
    })
}

fn empty_segment(seq: u64, path: PathBuf, file: Rc<DmaFile>, format_version: u32) -> SegmentFile {
    SegmentFile {
        seq,
        path,
        file,
        format_version,
        max_index: HashMap::new(),
        checkpoint_base: HashMap::new(),
    }
}

/// A segment file opened by recovery.
enum OpenedSegment {
    /// A segment with a valid header of this log, written in `format_version`.
    Ready {
        file: Rc<DmaFile>,
        format_version: u32,
    },
    /// A last segment whose header was never written, which a crash during preparation
    /// leaves behind. It is removed once the scan succeeded.
    Unfinished(Rc<DmaFile>),
}

/// Opens a segment and verifies its header.
async fn open_segment(
    path: &Path,
    identity: LogIdentity,
    seq: u64,
    is_last: bool,
    write_flags: i32,
) -> Result<OpenedSegment, StorageError> {
    let file = open_for_writes(path, write_flags)
        .await
        .map_err(|error| open_error(path, error))?;
    let block = file
        .read_at_aligned(0, BLOCK_BYTES as usize)
        .await
        .map_err(|error| StorageError::from_io("reading", path, glommio_io_error(error)))?;
    let header = match format::decode_segment_header(&block) {
        Ok(header) => header,
        Err(_) if is_last && block.iter().all(|byte| *byte == 0) => {
            return Ok(OpenedSegment::Unfinished(Rc::new(file)));
        }
        Err(source) => {
            return Err(StorageError::Format {
                path: path.to_path_buf(),
                offset: 0,
                source,
            });
        }
    };
    let found = LogIdentity {
        cluster_id: header.cluster_id,
        node_id: header.node_id,
        shard: header.shard,
    };
    if found != identity {
        return Err(StorageError::IdentityMismatch {
            path: path.to_path_buf(),
            expected: identity,
            found,
        });
    }
    if header.segment_seq != seq {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            detail: format!(
                "the header names segment {} but the file name says {seq}",
                header.segment_seq
            ),
        });
    }
    Ok(OpenedSegment::Ready {
        file: Rc::new(file),
        format_version: header.format_version,
    })
}

/// A damaged batch found while scanning: the end of the log, unless valid data follows.
#[derive(Debug)]
struct Damage {
    segment_seq: u64,
    path: PathBuf,
    offset: u64,
    /// Where a search for later valid batches starts.
    search_from: u64,
    detail: String,
}

/// The batches found after damage in a segment.
enum Later {
    /// No batch newer than the log's last valid one.
    Nothing,
    /// Only batches written while the damaged batch was not yet synced: an unacknowledged
    /// tail.
    UnsyncedTail,
    /// A batch written after the damaged batch was synced, at this offset with this
    /// sequence number.
    ProvesSynced((u64, u64)),
}

/// Reads a segment through a buffer of aligned reads.
struct SegmentReader<'a> {
    file: &'a DmaFile,
    path: &'a Path,
    file_bytes: u64,
    buffer: Option<ReadResult>,
    buffer_start: u64,
}

impl<'a> SegmentReader<'a> {
    async fn new(file: &'a DmaFile, path: &'a Path) -> Result<SegmentReader<'a>, StorageError> {
        let file_bytes = file
            .file_size()
            .await
            .map_err(|error| StorageError::from_io("inspecting", path, glommio_io_error(error)))?;
        Ok(SegmentReader {
            file,
            path,
            file_bytes,
            buffer: None,
            buffer_start: 0,
        })
    }

    /// The bytes at `offset..offset + len`, or fewer where the file ends.
    async fn bytes(&mut self, offset: u64, len: u64) -> Result<&[u8], StorageError> {
        let end = (offset + len).min(self.file_bytes);
        let covered = self.buffer.as_ref().is_some_and(|buffer| {
            offset >= self.buffer_start && end <= self.buffer_start + buffer.len() as u64
        });
        if !covered {
            let start = offset - offset % BLOCK_BYTES;
            let read_bytes = align_up(end - start).max(SCAN_READ_BYTES);
            let read = self
                .file
                .read_at_aligned(start, read_bytes as usize)
                .await
                .map_err(|error| {
                    StorageError::from_io("reading", self.path, glommio_io_error(error))
                })?;
            self.buffer = Some(read);
            self.buffer_start = start;
        }
        let buffer = self.buffer.as_ref().expect("the buffer was just filled");
        let from = (offset - self.buffer_start) as usize;
        let to = ((end.max(offset) - self.buffer_start) as usize).min(buffer.len());
        Ok(&buffer[from.min(to)..to])
    }
}

/// What one valid batch held.
struct ScannedBatch {
    batch_seq: u64,
    records: Vec<DecodedRecord>,
    batch_bytes: u64,
}

struct Scan {
    groups: BTreeMap<GroupId, GroupLog<DiskSlot>>,
    cache: EntryCache,
    segments: BTreeMap<u64, SegmentFile>,
    last_batch_seq: Option<u64>,
    damage: Option<Damage>,
    /// Segment and offset where the writer continues.
    active: Option<(u64, u64)>,
    /// Groups with at least one entry replayed so far.
    entries_seen: HashSet<GroupId>,
    /// Groups whose first replayed entry followed a gap, with the last index of the gap.
    /// A compaction record later in the scan must cover each gap, or entries are missing.
    unconfirmed_gaps: BTreeMap<GroupId, LogIndex>,
    /// Segments that hold no batch: one whose preparation did not finish, and those after
    /// the torn end of the log. They are removed only once the whole scan succeeded, so
    /// that a failed recovery leaves every file as it found it.
    unused_segments: Vec<(PathBuf, Rc<DmaFile>)>,
}

impl Scan {
    fn new(config: &LogConfig) -> Scan {
        Scan {
            groups: BTreeMap::new(),
            cache: EntryCache::new(config.entry_cache_bytes_max),
            segments: BTreeMap::new(),
            last_batch_seq: None,
            damage: None,
            active: None,
            entries_seen: HashSet::new(),
            unconfirmed_gaps: BTreeMap::new(),
            unused_segments: Vec::new(),
        }
    }

    async fn scan_segment(
        &mut self,
        seq: u64,
        path: PathBuf,
        file: Rc<DmaFile>,
        format_version: u32,
    ) -> Result<(), StorageError> {
        let mut segment = empty_segment(seq, path.clone(), Rc::clone(&file), format_version);
        let mut reader = SegmentReader::new(&file, &path).await?;
        let mut offset = BLOCK_BYTES;
        let mut first_batch = true;
        while offset + BATCH_HEADER_BYTES as u64 <= reader.file_bytes {
            let batch = match read_batch(&mut reader, offset).await? {
                BatchRead::End => {
                    // A zeroed header ends the segment unless a later batch proves that a
                    // synced batch was lost here. A later batch written while this one was
                    // unsynced is an unacknowledged tail, truncated with it.
                    let damage = Damage {
                        segment_seq: seq,
                        path: path.clone(),
                        offset,
                        search_from: offset + BLOCK_BYTES,
                        detail: "the batch header is zeroed".to_string(),
                    };
                    match self.judge_damage(&mut reader, &damage).await? {
                        Later::Nothing => {}
                        Later::UnsyncedTail => self.damage = Some(damage),
                        Later::ProvesSynced(found) => {
                            return Err(corrupt_before_valid(&damage, &path, found));
                        }
                    }
                    break;
                }
                BatchRead::Valid(batch)
                    if self
                        .last_batch_seq
                        .is_some_and(|last| batch.batch_seq <= last) =>
                {
                    // A batch older than the log's last one is left over from the
                    // segment's earlier use (segments are recycled). Like a zeroed header it
                    // ends the segment, unless a newer batch follows.
                    let damage = Damage {
                        segment_seq: seq,
                        path: path.clone(),
                        offset,
                        search_from: offset + BLOCK_BYTES,
                        detail: format!("batch {} is older than the log", batch.batch_seq),
                    };
                    match self.judge_damage(&mut reader, &damage).await? {
                        Later::Nothing => {}
                        Later::UnsyncedTail => self.damage = Some(damage),
                        Later::ProvesSynced(found) => {
                            return Err(corrupt_before_valid(&damage, &path, found));
                        }
                    }
                    break;
                }
                BatchRead::Valid(batch) => batch,
                BatchRead::Damaged {
                    detail,
                    search_from,
                } => {
                    self.damage = Some(Damage {
                        segment_seq: seq,
                        path: path.clone(),
                        offset,
                        search_from,
                        detail,
                    });
                    break;
                }
            };
            if let Some(last) = self.last_batch_seq
                && batch.batch_seq != last + 1
            {
                self.damage = Some(Damage {
                    segment_seq: seq,
                    path: path.clone(),
                    offset,
                    // The misplaced batch's own header may prove the missing one synced.
                    search_from: offset,
                    detail: format!(
                        "batch {} found where batch {} belongs",
                        batch.batch_seq,
                        last + 1
                    ),
                });
                break;
            }
            self.replay(&mut segment, &batch, offset)
                .map_err(|detail| StorageError::Corrupt {
                    path: path.clone(),
                    offset,
                    detail,
                })?;
            if first_batch {
                segment.checkpoint_base = self.compaction_points();
                first_batch = false;
            }
            self.last_batch_seq = Some(batch.batch_seq);
            offset += align_up(batch.batch_bytes);
            self.cache.evict(None);
        }

        if let Some(damage) = self.damage.take() {
            if let Later::ProvesSynced(found) = self.judge_damage(&mut reader, &damage).await? {
                return Err(corrupt_before_valid(&damage, &path, found));
            }
            self.damage = Some(damage);
        }
        self.active = Some((seq, offset));
        self.segments.insert(seq, segment);
        Ok(())
    }

    /// Looks past damage in the segment being scanned for a batch that proves the damaged
    /// one was synced. The damaged batch is the one after the last valid batch.
    async fn judge_damage(
        &self,
        reader: &mut SegmentReader<'_>,
        damage: &Damage,
    ) -> Result<Later, StorageError> {
        let damaged_seq = self.last_batch_seq.map_or(1, |last| last + 1);
        find_later_batches(reader, damage.search_from, damaged_seq).await
    }

    /// Returns whether segment `seq` starts with the batch that follows the last valid one,
    /// right after the segment whose end was found damaged. The flusher rotates before it
    /// writes a batch that does not fit. The bytes after a segment's last batch are
    /// therefore whatever the file held before: zeros in a new segment, data of its earlier
    /// use in a recycled one, which may read as a damaged batch. The next batch at the
    /// start of the next segment proves that no batch is missing in between.
    async fn continues_after_stale_tail(
        &self,
        seq: u64,
        path: &Path,
        file: &Rc<DmaFile>,
    ) -> Result<bool, StorageError> {
        let (Some(damage), Some(last)) = (self.damage.as_ref(), self.last_batch_seq) else {
            return Ok(false);
        };
        if damage.segment_seq + 1 != seq {
            return Ok(false);
        }
        let mut reader = SegmentReader::new(file, path).await?;
        if reader.file_bytes < BLOCK_BYTES + BATCH_HEADER_BYTES as u64 {
            return Ok(false);
        }
        Ok(matches!(
            read_batch(&mut reader, BLOCK_BYTES).await?,
            BatchRead::Valid(batch) if batch.batch_seq == last + 1
        ))
    }

    /// After damage in an earlier segment, a later segment may only be one prepared but
    /// never written. It is removed, once every later segment was checked and found unused
    /// too, so that the writer continues after the last valid batch.
    async fn check_after_damage(
        &mut self,
        path: &Path,
        file: &Rc<DmaFile>,
    ) -> Result<(), StorageError> {
        let damage = self.damage.as_ref().expect("called only after damage");
        let mut reader = SegmentReader::new(file, path).await?;
        // A recycled segment keeps batches of its earlier use, all older than the log's
        // end. The flusher drains every sync before it rotates, so a newer batch in a later
        // segment records that the damaged batch was synced. The exceptions are the two
        // unsynced batches that open a segment, its checkpoint and its first batch, which
        // share one fdatasync. Those were never acknowledged and go with the segment.
        let damaged_seq = self.last_batch_seq.map_or(1, |last| last + 1);
        if let Later::ProvesSynced(found) =
            find_later_batches(&mut reader, BLOCK_BYTES, damaged_seq).await?
        {
            return Err(corrupt_before_valid(damage, path, found));
        }
        tracing::warn!(
            path = %path.display(),
            "removing an unused segment after the torn end of the log"
        );
        self.unused_segments
            .push((path.to_path_buf(), Rc::clone(file)));
        Ok(())
    }

    async fn remove_unused_segments(&mut self) -> Result<(), StorageError> {
        for (path, file) in self.unused_segments.drain(..) {
            file.remove().await.map_err(|error| {
                StorageError::from_io("removing", &path, glommio_io_error(error))
            })?;
        }
        Ok(())
    }

    fn compaction_points(&self) -> HashMap<GroupId, LogIndex> {
        self.groups
            .iter()
            .filter(|(_, log)| log.compacted_index > LogIndex(0))
            .map(|(group, log)| (*group, log.compacted_index))
            .collect()
    }

    /// Applies a batch's records; returns what is inconsistent if anything is.
    fn replay(
        &mut self,
        segment: &mut SegmentFile,
        batch: &ScannedBatch,
        batch_offset: u64,
    ) -> Result<(), String> {
        let payload_offset = batch_offset + BATCH_HEADER_BYTES as u64;
        for decoded in &batch.records {
            let group = decoded.record.group();
            let log = self.groups.entry(group).or_default();
            match &decoded.record {
                Record::Entry { entry, .. } => {
                    let first_seen = self.entries_seen.insert(group);
                    let gap = entry.index.0 > log.last_index().0 + 1;
                    if first_seen && log.slots.is_empty() && gap {
                        // The group's earlier entries were in segments deleted once a later
                        // checkpoint recorded their compaction. That checkpoint comes later
                        // in the scan and sets the compacted term; until then the entry's
                        // own term takes its place.
                        log.compacted_index = LogIndex(entry.index.0 - 1);
                        log.compacted_term = entry.term;
                        self.unconfirmed_gaps.insert(group, log.compacted_index);
                    }
                    if entry.index.0 != log.last_index().0 + 1 {
                        return Err(format!(
                            "entry {} of group {group} does not follow its last index {}",
                            entry.index.0,
                            log.last_index().0
                        ));
                    }
                    if entry.term < log.last_term() {
                        return Err(format!(
                            "entry {} of group {group} has term {}, below the term {} before it",
                            entry.index.0,
                            entry.term.0,
                            log.last_term().0
                        ));
                    }
                    let location = Location {
                        segment_seq: segment.seq,
                        offset: payload_offset + u64::from(decoded.payload_offset),
                        len: decoded.record_bytes,
                    };
                    let cached = self.cache.insert(entry.data.clone(), None);
                    log.slots.push_back(DiskSlot {
                        term: entry.term,
                        kind: entry.kind,
                        placement: Placement::OnDisk(location),
                        cached,
                    });
                    let highest = segment.max_index.entry(group).or_default();
                    *highest = (*highest).max(entry.index);
                }
                Record::HardState { hard_state, .. } => log.hard_state = Some(*hard_state),
                Record::Truncate { from, .. } => {
                    log.truncate_from(*from);
                }
                Record::Compact { through, term, .. } => {
                    if self
                        .unconfirmed_gaps
                        .get(&group)
                        .is_some_and(|gap| through >= gap)
                    {
                        self.unconfirmed_gaps.remove(&group);
                        // The bridged gap ends at or before `through`; the record's term
                        // replaces the stand-in only if it is for the same index.
                        if *through == log.compacted_index {
                            log.compacted_term = *term;
                        }
                    }
                    log.compact(*through, *term);
                }
                Record::InstallSnapshot { index, term, .. } => {
                    // The snapshot replaces everything before it, so entries missing from
                    // before it (in segments deleted once a checkpoint recorded it) are not
                    // a gap any more.
                    self.unconfirmed_gaps.remove(&group);
                    log.install_snapshot(*index, *term);
                }
            }
        }
        Ok(())
    }
}

enum BatchRead {
    End,
    Valid(ScannedBatch),
    Damaged { detail: String, search_from: u64 },
}

async fn read_batch(
    reader: &mut SegmentReader<'_>,
    offset: u64,
) -> Result<BatchRead, StorageError> {
    let header_bytes = reader.bytes(offset, BATCH_HEADER_BYTES as u64).await?;
    if format::is_zeroed_header(header_bytes) && header_bytes.len() == BATCH_HEADER_BYTES {
        return Ok(BatchRead::End);
    }
    let header = match format::decode_batch_header(header_bytes) {
        Ok(header) => header,
        Err(error) => {
            return Ok(BatchRead::Damaged {
                detail: error.to_string(),
                search_from: offset + BLOCK_BYTES,
            });
        }
    };
    let search_from = offset + align_up(header.batch_bytes());
    let batch_bytes = reader.bytes(offset, header.batch_bytes()).await?;
    let Some(payload) = batch_bytes.get(BATCH_HEADER_BYTES..) else {
        return Ok(BatchRead::Damaged {
            detail: "the file ends inside the batch header".to_string(),
            search_from,
        });
    };
    if payload.len() < header.payload_len as usize {
        let error = FormatError::Truncated {
            what: "batch",
            needed: u64::from(header.payload_len),
            available: payload.len() as u64,
        };
        return Ok(BatchRead::Damaged {
            detail: error.to_string(),
            search_from,
        });
    }
    match format::decode_payload(payload, header.record_count) {
        Ok(records) => Ok(BatchRead::Valid(ScannedBatch {
            batch_seq: header.batch_seq,
            records,
            batch_bytes: header.batch_bytes(),
        })),
        Err(error) => Ok(BatchRead::Damaged {
            detail: error.to_string(),
            search_from,
        }),
    }
}

/// Looks from `from` on for batch headers numbered `damaged_seq` or later, which tell
/// whether the damaged batch `damaged_seq` had been synced when they were written.
async fn find_later_batches(
    reader: &mut SegmentReader<'_>,
    from: u64,
    damaged_seq: u64,
) -> Result<Later, StorageError> {
    let mut offset = align_up(from);
    let mut unsynced_tail = false;
    while offset + BATCH_HEADER_BYTES as u64 <= reader.file_bytes {
        let bytes = reader.bytes(offset, BATCH_HEADER_BYTES as u64).await?;
        if let Ok(header) = format::decode_batch_header(bytes)
            && header.batch_seq >= damaged_seq
        {
            if header.synced_through_seq >= damaged_seq {
                return Ok(Later::ProvesSynced((offset, header.batch_seq)));
            }
            unsynced_tail = true;
        }
        offset += BLOCK_BYTES;
    }
    Ok(if unsynced_tail {
        Later::UnsyncedTail
    } else {
        Later::Nothing
    })
}

fn corrupt_before_valid(damage: &Damage, path: &Path, found: (u64, u64)) -> StorageError {
    StorageError::Corrupt {
        path: damage.path.clone(),
        offset: damage.offset,
        detail: format!(
            "{}; batch {} at offset {} of {} follows it",
            damage.detail,
            found.1,
            found.0,
            path.display()
        ),
    }
}

/// Overwrites the torn final batch, and everything after it in its segment, with zeros, so
/// that the writer continues at its offset and no fragment of it is ever read again.
async fn truncate_torn_tail(
    damage: &Damage,
    segments: &BTreeMap<u64, SegmentFile>,
) -> Result<(), StorageError> {
    tracing::warn!(
        path = %damage.path.display(),
        offset = damage.offset,
        detail = %damage.detail,
        "truncating the torn final batch of the log, which was never acknowledged"
    );
    let segment = &segments[&damage.segment_seq];
    let file = &segment.file;
    let file_bytes = file.file_size().await.map_err(|error| {
        StorageError::from_io("inspecting", &segment.path, glommio_io_error(error))
    })?;
    let mut offset = damage.offset;
    while offset < file_bytes {
        let len = SCAN_READ_BYTES.min(align_up(file_bytes) - offset);
        let mut buffer = file.alloc_dma_buffer(len as usize);
        buffer.as_bytes_mut().fill(0);
        write_all(file, buffer, offset, &segment.path).await?;
        offset += len;
    }
    file.fdatasync()
        .await
        .map_err(|error| StorageError::SyncFailed {
            path: segment.path.clone(),
            source: Arc::new(glommio_io_error(error)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn einval_from_direct_open_means_no_direct_io() {
        let path = Path::new("/data/shard-0/00000000000000000001.wal");
        let einval = std::io::Error::from_raw_os_error(nix::libc::EINVAL);

        let error = open_error(path, glommio::GlommioError::IoError(einval));

        assert!(
            matches!(&error, StorageError::DirectIoUnsupported { path: found } if found == path),
            "EINVAL must map to DirectIoUnsupported naming the file, got {error:?}"
        );
    }

    #[test]
    fn other_open_errors_keep_their_cause() {
        let path = Path::new("/data/shard-0/00000000000000000001.wal");
        let denied = std::io::Error::from_raw_os_error(nix::libc::EACCES);

        let error = open_error(path, glommio::GlommioError::IoError(denied));

        assert!(
            matches!(error, StorageError::Io { .. }),
            "EACCES must map to Io, got {error:?}"
        );
    }
}
