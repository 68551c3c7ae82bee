//! The identity file of a shard's data directory: which cluster, node and shard its
//! segments belong to. Written once, atomically, when the directory is first used.
//!
//! The file is text, one `key=value` per line, ending with a CRC-32 of the lines before it,
//! so that an operator can read it and a damaged copy is recognised.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LogIdentity, StorageError};

pub(crate) const IDENTITY_FILE: &str = "identity";
const IDENTITY_HEADER: &str = "shardraft-log-identity v1";

fn render(identity: &LogIdentity) -> String {
    let body = format!(
        "{IDENTITY_HEADER}\ncluster_id={}\nnode_id={}\nshard={}\n",
        identity.cluster_id, identity.node_id, identity.shard
    );
    let crc = crc32fast::hash(body.as_bytes());
    format!("{body}crc32={crc:08x}\n")
}

fn parse(path: &Path, text: &str) -> Result<LogIdentity, StorageError> {
    let corrupt = |detail: &str| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        detail: detail.to_string(),
    };
    let (body, crc_line) = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .ok_or_else(|| corrupt("the identity file has too few lines"))?;
    let body = format!("{body}\n");
    let stored = crc_line
        .strip_prefix("crc32=")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| corrupt("the identity file has no valid crc32 line"))?;
    if crc32fast::hash(body.as_bytes()) != stored {
        return Err(corrupt(
            "the identity file's checksum does not match its contents",
        ));
    }
    let mut lines = body.lines();
    if lines.next() != Some(IDENTITY_HEADER) {
        return Err(corrupt("the identity file has an unknown header line"));
    }
    let mut value = |key: &str| -> Result<u64, StorageError> {
        lines
            .next()
            .and_then(|line| line.strip_prefix(key))
            .and_then(|rest| rest.strip_prefix('='))
            .and_then(|number| number.parse().ok())
            .ok_or_else(|| corrupt(&format!("the identity file has no valid {key} line")))
    };
    let cluster_id = value("cluster_id")?;
    let node_id = value("node_id")?;
    let shard = value("shard")?;
    let shard = u32::try_from(shard).map_err(|_| corrupt("the shard number exceeds 32 bits"))?;
    Ok(LogIdentity {
        cluster_id,
        node_id,
        shard,
    })
}

/// Checks the identity file of `dir` against `expected`, or writes it if the directory is
/// new. `has_segments` tells whether the directory already holds log data, in which case a
/// missing identity file is an error rather than a fresh start.
///
/// Runs once at startup, before the shard serves anything, with blocking file calls: the
/// log calls it on glommio's blocking thread pool.
pub(crate) fn check_or_create(
    dir: &Path,
    expected: LogIdentity,
    has_segments: bool,
) -> Result<(), StorageError> {
    let path = dir.join(IDENTITY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found = parse(&path, &text)?;
            if found != expected {
                return Err(StorageError::IdentityMismatch {
                    path: dir.to_path_buf(),
                    expected,
                    found,
                });
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if has_segments {
                return Err(StorageError::IdentityMissing {
                    path: dir.to_path_buf(),
                });
            }
            write_atomically(dir, &path, render(&expected).as_bytes())
        }
        Err(error) => Err(StorageError::from_io("reading", path, error)),
    }
}

/// Writes `contents` to `path` through a temporary file, an fsync and a rename, then syncs
/// the directory, so that a crash leaves either no file or the whole file.
fn write_atomically(dir: &Path, path: &PathBuf, contents: &[u8]) -> Result<(), StorageError> {
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|error| StorageError::from_io("writing", path.clone(), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY: LogIdentity = LogIdentity {
        cluster_id: 0xfeed,
        node_id: 3,
        shard: 1,
    };

    #[test]
    fn rendered_identity_parses_back() {
        let text = render(&IDENTITY);

        assert_eq!(parse(Path::new("x"), &text).unwrap(), IDENTITY);
    }

    #[test]
    fn edited_identity_fails_its_checksum() {
        let text = render(&IDENTITY).replace("node_id=3", "node_id=4");

        let error = parse(Path::new("x"), &text).unwrap_err();

        assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn truncated_identity_is_rejected() {
        let text = render(&IDENTITY);
        for len in 0..text.len() - 1 {
            assert!(parse(Path::new("x"), &text[..len]).is_err(), "length {len}");
        }
    }
}
