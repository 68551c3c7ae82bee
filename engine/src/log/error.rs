//! Errors of the write-ahead log. Each names the file or directory involved and, for faults
//! of the environment, what the operator can do about them.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use shardraft_raft::LogIndex;

use super::GroupId;
use super::config::LogConfigError;
use super::format::FormatError;

/// Identity a data directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogIdentity {
    pub cluster_id: u64,
    pub node_id: u64,
    pub shard: u32,
}

impl std::fmt::Display for LogIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cluster {:#x}, node {}, shard {}",
            self.cluster_id, self.node_id, self.shard
        )
    }
}

/// Every way the log can fail. Cloneable so that one failure can be reported to every
/// waiter; I/O errors are shared behind an `Arc`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "data directory {path} does not exist; create it or set data_dir to an existing \
         directory"
    )]
    DataDirMissing { path: PathBuf },

    #[error(
        "data directory {path} is not writable ({source}); fix its permissions or choose \
         another data_dir"
    )]
    DataDirNotWritable {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },

    #[error(
        "data directory {path} is on {filesystem}, which keeps data only in memory and loses \
         it on reboot; use a directory on a disk-backed filesystem, or storage = \"memory\" \
         if the node should not persist"
    )]
    VolatileFilesystem {
        path: PathBuf,
        filesystem: &'static str,
    },

    #[error(
        "the filesystem of {path} does not support O_DIRECT; use a directory on a \
         filesystem that does (ext4, xfs, btrfs), or storage = \"memory\""
    )]
    DirectIoUnsupported { path: PathBuf },

    #[error(
        "disk full while {operation} {path}; free space on that filesystem or move \
         data_dir, then restart the node (writes since the last durable batch were not \
         acknowledged)"
    )]
    DiskFull {
        operation: &'static str,
        path: PathBuf,
    },

    #[error("{operation} {path} failed: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },

    #[error(
        "fdatasync of {path} failed ({source}); the log stopped accepting writes because \
         retrying the sync could report data as durable that the kernel already dropped. \
         Check the device, then restart the node: recovery keeps what is on disk"
    )]
    SyncFailed {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },

    #[error("the log stopped after an earlier failure and accepts no more writes: {cause}")]
    Stopped { cause: Box<StorageError> },

    #[error(
        "data directory {path} belongs to {found}, but this node is {expected}; point \
         data_dir at this node's own directory, or move the directory away to start empty"
    )]
    IdentityMismatch {
        path: PathBuf,
        expected: LogIdentity,
        found: LogIdentity,
    },

    #[error(
        "data directory {path} holds log segments but no identity file; restore the file \
         `identity` from a backup, or move the directory away to start empty"
    )]
    IdentityMissing { path: PathBuf },

    #[error(
        "log data in {path} at offset {offset} is corrupt ({detail}) inside data that was \
         already made durable, so it may hold acknowledged writes and is not truncated. \
         Restore the file from a replica or backup, or remove this node's data directory \
         and let it rejoin as a new member"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },

    #[error("segment {path} is missing between segments that exist; restore it from a backup")]
    SegmentMissing { path: PathBuf },

    #[error("invalid format in {path} at offset {offset}: {source}")]
    Format {
        path: PathBuf,
        offset: u64,
        #[source]
        source: FormatError,
    },

    #[error("invalid write to group {group}: {detail}")]
    InvalidWrite { group: GroupId, detail: String },

    #[error(
        "a write of {bytes} bytes does not fit in a segment of {segment_bytes} bytes; \
         raise segment_bytes or lower the batch limits"
    )]
    BatchTooLarge { bytes: u64, segment_bytes: u64 },

    #[error("group {group} has no entry {index}: entries up to {compacted} were compacted")]
    Compacted {
        group: GroupId,
        index: LogIndex,
        compacted: LogIndex,
    },

    #[error("group {group} has no entry {index}: its last index is {last}")]
    Unavailable {
        group: GroupId,
        index: LogIndex,
        last: LogIndex,
    },

    #[error(transparent)]
    Config(#[from] LogConfigError),

    #[error("the log is closed")]
    Closed,
}

impl StorageError {
    /// Converts an I/O error of `operation` on `path`, recognising a full disk.
    pub fn from_io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(nix::libc::ENOSPC) {
            return StorageError::DiskFull { operation, path };
        }
        StorageError::Io {
            operation,
            path,
            source: Arc::new(source),
        }
    }

    /// Whether the error leaves the log unable to accept writes.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            StorageError::InvalidWrite { .. }
                | StorageError::Compacted { .. }
                | StorageError::Unavailable { .. }
                | StorageError::BatchTooLarge { .. }
                | StorageError::Config(_)
        )
    }
}

/// Extracts the operating system's error from a glommio error.
pub(crate) fn glommio_io_error(error: glommio::GlommioError<()>) -> io::Error {
    match error {
        glommio::GlommioError::IoError(source)
        | glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}
