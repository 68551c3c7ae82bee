//! The directory the benchmarks write in, and the facts about the machine and filesystem that belong
//! beside their figures.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

/// Name of the directory the benchmarks create when none is given.
const DEFAULT_DIR_NAME: &str = "shardraft-bench-log";

/// `ramfs` from linux/magic.h; the libc crate does not define it.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Returns the default directory to measure in: one under the system temp directory unless
/// that is tmpfs or ramfs, which the log rejects, and otherwise one under the cargo target
/// directory (`CARGO_TARGET_DIR` if set, else the workspace's `target/`).
pub fn default_data_dir() -> PathBuf {
    let temp = std::env::temp_dir();
    match volatile_filesystem(&temp) {
        Ok(None) => temp.join(DEFAULT_DIR_NAME),
        Ok(Some(_)) | Err(_) => target_dir().join(DEFAULT_DIR_NAME),
    }
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Returns the name of the filesystem of `dir` if it keeps data only in memory (tmpfs or
/// ramfs).
///
/// # Errors
/// When `statfs` on `dir` fails.
pub fn volatile_filesystem(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let stat = nix::sys::statfs::statfs(dir)
        .with_context(|| format!("statfs of {} failed", dir.display()))?;
    // The width of the magic number differs between targets.
    #[allow(clippy::unnecessary_cast)]
    let magic = stat.filesystem_type().0 as i64;
    #[allow(clippy::unnecessary_cast)]
    let tmpfs = nix::libc::TMPFS_MAGIC as i64;
    Ok(match magic {
        kind if kind == tmpfs => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    })
}

/// Creates `dir` if needed and rejects it if it is on a filesystem the log rejects.
///
/// # Errors
/// When `dir` cannot be created or inspected, or is on tmpfs or ramfs.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {} failed", dir.display()))?;
    if let Some(filesystem) = volatile_filesystem(dir)? {
        bail!(
            "{} is on {filesystem}, which keeps data only in memory: the write-ahead log \
             rejects such a directory (StorageError::VolatileFilesystem) and O_DIRECT timings \
             there would mean nothing. Pass --dir with a directory on a disk-backed \
             filesystem such as ext4 or xfs",
            dir.display()
        );
    }
    Ok(())
}

/// The mount a directory lives on, from `/proc/mounts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    /// Filesystem type as the kernel names it, such as `ext4`.
    pub fs_type: String,
    /// Mounted device or source, such as `/dev/nvme0n1p2`.
    pub source: String,
    pub mount_point: PathBuf,
    pub options: String,
}

/// Finds the mount of `dir`: the entry of `/proc/mounts` with the longest mount point that
/// contains it. The last such entry wins, as it is the one mounted on top.
///
/// # Errors
/// When `dir` cannot be resolved or `/proc/mounts` cannot be read or has no entry for it.
pub fn filesystem_of(dir: &Path) -> anyhow::Result<Filesystem> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {} failed", dir.display()))?;
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts failed")?;
    find_mount(&mounts, &dir)
        .with_context(|| format!("/proc/mounts lists no mount containing {}", dir.display()))
}

fn find_mount(mounts: &str, dir: &Path) -> Option<Filesystem> {
    let mut best: Option<Filesystem> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(mount_point), Some(fs_type), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mount_field(mount_point));
        if !dir.starts_with(&mount_point) {
            continue;
        }
        let longer = best.as_ref().is_none_or(|current| {
            mount_point.as_os_str().len() >= current.mount_point.as_os_str().len()
        });
        if longer {
            best = Some(Filesystem {
                fs_type: fs_type.to_string(),
                source: unescape_mount_field(source),
                mount_point,
                options: options.to_string(),
            });
        }
    }
    best
}

/// Undoes the octal escapes (`\040` for a space) that `/proc/mounts` uses in paths.
fn unescape_mount_field(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|digits| u8::from_str_radix(digits, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a benchmark figure depends on besides the code.
#[derive(Clone, Debug, Serialize)]
pub struct MachineFacts {
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// Kernel release, as `uname -r` prints it.
    pub kernel: String,
    /// Compiler that built this binary.
    pub rustc: String,
}

/// Reads the machine facts; a fact that cannot be read is `unknown`.
pub fn machine_facts() -> MachineFacts {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    MachineFacts {
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(0, |count| count.get()),
        kernel,
        rustc: env!("SHARDRAFT_BENCH_RUSTC_VERSION").to_string(),
    }
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`, if readable.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|field| field.parse().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,relatime 0 0
/dev/vdb /data xfs rw,noatime 0 0
/dev/vdc /data/with\\040space ext4 rw 0 0
";

    #[test]
    fn mount_is_longest_prefix() {
        let mount = find_mount(MOUNTS, Path::new("/data/wal")).unwrap();

        assert_eq!(mount.fs_type, "xfs");
        assert_eq!(mount.source, "/dev/vdb");
        assert_eq!(mount.mount_point, PathBuf::from("/data"));
    }

    #[test]
    fn mount_prefix_matches_whole_components() {
        let mount = find_mount(MOUNTS, Path::new("/database")).unwrap();

        assert_eq!(mount.mount_point, PathBuf::from("/"));
    }

    #[test]
    fn mount_point_escapes_are_decoded() {
        let mount = find_mount(MOUNTS, Path::new("/data/with space/wal")).unwrap();

        assert_eq!(mount.source, "/dev/vdc");
    }

    #[test]
    fn unescape_keeps_lone_backslash() {
        assert_eq!(unescape_mount_field("a\\b"), "a\\b");
    }
}
