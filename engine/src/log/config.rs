//! Settings of the write-ahead log, read from the node's config file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a shard keeps its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Segment files under `data_dir`, written with O_DIRECT and made durable by O_DSYNC
    /// writes or fdatasync (see [`SyncMethod`]).
    #[default]
    Disk,
    /// Process memory only: the node replicates but keeps nothing across a restart of the
    /// process. For tests and for small clusters whose data can be rebuilt.
    Memory,
}

impl std::str::FromStr for StorageKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "disk" => Ok(StorageKind::Disk),
            "memory" => Ok(StorageKind::Memory),
            other => Err(format!(
                "invalid storage kind {other:?}: expected \"disk\" or \"memory\""
            )),
        }
    }
}

/// The way the log makes a batch durable when `sync_writes` is on.
///
/// Both give the same guarantee: a batch counts as durable once its data, and whatever
/// metadata reading it back needs, is on stable storage. They differ in the number of
/// operations per batch, which decides latency when few writers share each batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMethod {
    /// Segment files are opened with O_DSYNC, so that each batch's write returns only once
    /// it is durable: one operation per batch. On the development VM (ext4 on a virtio
    /// disk) a lone appender committed 27 to 43 % more entries per second this way than
    /// with `fdatasync`, with a p99 a third lower. With 256 appenders it ranged from 2 %
    /// behind to 15 % ahead (see bench/BENCHMARKS.md).
    #[default]
    Dsync,
    /// Each batch's write is followed by an fdatasync of its segment file, submitted once
    /// the write completed: two operations per batch, and the executor must see the write
    /// complete before the sync starts. For filesystems or devices where O_DSYNC writes
    /// are slow.
    Fdatasync,
}

impl std::str::FromStr for SyncMethod {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "dsync" => Ok(SyncMethod::Dsync),
            "fdatasync" => Ok(SyncMethod::Fdatasync),
            other => Err(format!(
                "invalid sync method {other:?}: expected \"dsync\" or \"fdatasync\""
            )),
        }
    }
}

/// Smallest segment: the header block plus room for at least a few batches.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest segment. Batch payload lengths are stored in 32 bits.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// Settings of one shard's log. Field names match the keys of the `[log]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub storage: StorageKind,
    /// Directory that holds one subdirectory per shard. Must exist.
    pub data_dir: PathBuf,
    /// Size at which the active segment is closed and the next one started. Segments are
    /// preallocated to this size.
    pub segment_bytes: u64,
    /// Largest single write (one batch, one fdatasync), its header and padding included,
    /// unless one submission alone is larger. Entries submitted while a write is in flight
    /// are coalesced into the next write up to this size, and beyond it they start the batch
    /// after. The default of 1 MiB splits a burst into several batches, so that the write
    /// of one overlaps the fdatasyncs of those before it. On the development VM, 1024
    /// closed-loop appenders of 4 KiB entries wrote 1.1 to 1.5 times as fast with 1 MiB as
    /// with 4 MiB. A power of two fits the log's staging buffers exactly (see
    /// [`io_memory_bytes`](super::io_memory_bytes)).
    pub flush_bytes_max: u64,
    /// Bytes of entries submitted but not yet durable beyond which
    /// [`has_room`](super::LogStore::has_room) reports false, so that the runtime stops
    /// proposing until the disk catches up.
    pub pending_bytes_max: u64,
    /// Bytes of recent durable entries kept in memory for reads; older entries are read
    /// back from the segment files.
    pub entry_cache_bytes_max: u64,
    /// Write zeros over a new segment before use. Overwriting allocated blocks is faster
    /// than writing into unwritten extents, whose conversion every fdatasync must commit.
    pub zero_fill_segments: bool,
    /// fdatasync each batch before reporting it durable. When false a batch counts as
    /// durable once its O_DIRECT write completed: it survives a crash of the process but
    /// not a power loss or a crash of the machine, whose device cache may still hold it.
    /// Segment checkpoints are still synced, once per segment. For benchmarks that compare
    /// durability classes; never for data that matters.
    pub sync_writes: bool,
    /// The way each batch is made durable when `sync_writes` is on: `"dsync"` (O_DSYNC
    /// writes, the default) or `"fdatasync"` (a write, then an fdatasync).
    pub sync_method: SyncMethod,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            storage: StorageKind::Disk,
            data_dir: PathBuf::from("data"),
            segment_bytes: 64 * 1024 * 1024,
            flush_bytes_max: 1024 * 1024,
            pending_bytes_max: 64 * 1024 * 1024,
            entry_cache_bytes_max: 64 * 1024 * 1024,
            zero_fill_segments: true,
            sync_writes: true,
            sync_method: SyncMethod::Dsync,
        }
    }
}

/// A config value outside its allowed range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid log setting {key} = {value}: {allowed}")]
pub struct LogConfigError {
    pub key: &'static str,
    pub value: u64,
    pub allowed: String,
}

impl LogConfig {
    /// Checks every value and the relations between them.
    ///
    /// # Errors
    /// Names the first key outside its range and the range allowed.
    pub fn validate(&self) -> Result<(), LogConfigError> {
        let block = super::format::BLOCK_BYTES;
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
            || !self.segment_bytes.is_multiple_of(block)
        {
            return Err(LogConfigError {
                key: "segment_bytes",
                value: self.segment_bytes,
                allowed: format!(
                    "a multiple of {block} from {SEGMENT_BYTES_MIN} to {SEGMENT_BYTES_MAX}"
                ),
            });
        }
        let flush_max_allowed = self.segment_bytes / 2;
        if self.flush_bytes_max < block || self.flush_bytes_max > flush_max_allowed {
            return Err(LogConfigError {
                key: "flush_bytes_max",
                value: self.flush_bytes_max,
                allowed: format!(
                    "from {block} to half of segment_bytes ({flush_max_allowed}), so that a \
                     segment holds at least two writes"
                ),
            });
        }
        if self.pending_bytes_max < self.flush_bytes_max {
            return Err(LogConfigError {
                key: "pending_bytes_max",
                value: self.pending_bytes_max,
                allowed: format!("at least flush_bytes_max ({})", self.flush_bytes_max),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(LogConfig::default().validate(), Ok(()));
    }

    #[test]
    fn storage_kind_parses_both_names() {
        assert_eq!("disk".parse(), Ok(StorageKind::Disk));
        assert_eq!("memory".parse(), Ok(StorageKind::Memory));
        assert!("ssd".parse::<StorageKind>().is_err());
    }

    #[test]
    fn sync_method_parses_both_names() {
        assert_eq!("dsync".parse(), Ok(SyncMethod::Dsync));
        assert_eq!("fdatasync".parse(), Ok(SyncMethod::Fdatasync));
        let error = "fsync".parse::<SyncMethod>().unwrap_err();
        assert!(error.contains("\"fsync\""), "{error}");
    }

    #[test]
    fn unaligned_segment_size_is_rejected() {
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES_MIN + 1,
            ..LogConfig::default()
        };

        let error = config.validate().unwrap_err();

        assert_eq!(error.key, "segment_bytes");
    }

    #[test]
    fn flush_larger_than_half_a_segment_is_rejected() {
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES_MIN,
            flush_bytes_max: SEGMENT_BYTES_MIN,
            ..LogConfig::default()
        };

        let error = config.validate().unwrap_err();

        assert_eq!(error.key, "flush_bytes_max");
    }

    #[test]
    fn pending_below_flush_is_rejected() {
        let config = LogConfig {
            pending_bytes_max: 4096,
            ..LogConfig::default()
        };

        let error = config.validate().unwrap_err();

        assert_eq!(error.key, "pending_bytes_max");
    }
}
