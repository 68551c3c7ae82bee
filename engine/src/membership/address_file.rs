//! The member address file, `<data_dir>/member-addresses`: the node's address book on
//! disk, so that a restart restores the addresses of members added at runtime even after
//! their change entries were compacted into snapshots. Nodes with `storage = "memory"`
//! keep no such file.
//!
//! Format, version 1, all integers little-endian:
//!
//! ```text
//! magic           4 bytes "SRMA"
//! version         u8 = 1
//! entry count     u32
//! entry           node id u64, length u16, that many bytes of MemberAddresses::encode()
//! checksum        u32, CRC-32 of every byte before it
//! ```
//!
//! The file is replaced whole through a temporary file, an fdatasync, a rename and an
//! fsync of the directory, so a crash leaves the old file or the new one.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardraft_raft::NodeId;

use super::{ContextError, MemberAddresses};

/// Name of the file inside the node's `log.data_dir`.
pub const ADDRESS_FILE_NAME: &str = "member-addresses";
/// The file format version this build writes and reads.
pub const ADDRESS_FILE_VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"SRMA";
/// Magic, version and entry count.
const HEADER_BYTES: usize = 4 + 1 + 4;
const CHECKSUM_BYTES: usize = 4;

/// A defect in the bytes of a member address file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressFileFormatError {
    #[error("the file ends at byte {offset} inside the {field}")]
    Truncated { offset: usize, field: &'static str },
    #[error("the file starts with {found:02x?} instead of the magic \"SRMA\"")]
    BadMagic { found: [u8; 4] },
    #[error("format version {found}; this build reads version {ADDRESS_FILE_VERSION}")]
    UnknownVersion { found: u8 },
    #[error(
        "the stored CRC-32 {stored:#010x} differs from {computed:#010x} computed over the contents"
    )]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("an entry has node id 0; node ids start at 1")]
    ZeroNode,
    #[error("node {node} has two entries")]
    DuplicateNode { node: u64 },
    #[error("the entry of node {node} holds no addresses")]
    MissingAddresses { node: u64 },
    #[error("the addresses of node {node} are invalid: {source}")]
    BadAddresses {
        node: u64,
        #[source]
        source: ContextError,
    },
    #[error("{bytes} bytes follow the last entry before the CRC-32")]
    TrailingBytes { bytes: usize },
}

/// The reason the member address file could not be read or written.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AddressFileError {
    #[error(
        "{operation} the member address file {path} failed ({source}); check the \
         permissions and free space of its directory"
    )]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(
        "the member address file {path} is invalid: {source}. Delete the file and restart \
         the node: members added at runtime then stay unreachable from this node until a \
         membership change names their addresses again, unless `members` in this node's \
         config lists them"
    )]
    Invalid {
        path: PathBuf,
        #[source]
        source: AddressFileFormatError,
    },
}

/// Encodes `members` in the file format.
pub fn encode(members: &BTreeMap<NodeId, MemberAddresses>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + members.len() * 40 + CHECKSUM_BYTES);
    out.extend_from_slice(&MAGIC);
    out.push(ADDRESS_FILE_VERSION);
    let count = u32::try_from(members.len()).expect("fewer than 2^32 members");
    out.extend_from_slice(&count.to_le_bytes());
    for (node, addresses) in members {
        let encoded = addresses.encode();
        // At most 58 bytes: a version byte and three IPv6 addresses with flags and ports.
        let length = u16::try_from(encoded.len()).expect("encoded addresses fit 16 bits");
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&encoded);
    }
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
}

/// Decodes a file's bytes.
///
/// # Errors
/// What is wrong with the bytes; never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<NodeId, MemberAddresses>, AddressFileFormatError> {
    let mut header = Cursor { bytes, offset: 0 };
    let magic = header.take(MAGIC.len(), "magic")?;
    if magic != MAGIC {
        let found = magic.try_into().expect("4 bytes taken");
        return Err(AddressFileFormatError::BadMagic { found });
    }
    let version = header.take(1, "version")?[0];
    if version != ADDRESS_FILE_VERSION {
        return Err(AddressFileFormatError::UnknownVersion { found: version });
    }
    header.take(4, "entry count")?;
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(AddressFileFormatError::Truncated {
            offset: bytes.len(),
            field: "CRC-32",
        });
    }
    let (contents, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    let stored = u32::from_le_bytes(checksum.try_into().expect("4 bytes split off"));
    let computed = crc32fast::hash(contents);
    if stored != computed {
        return Err(AddressFileFormatError::ChecksumMismatch { stored, computed });
    }

    // The entry count is read again, now that the checksum has verified it.
    let count_offset = MAGIC.len() + 1;
    let mut entries = Cursor {
        bytes: &contents[count_offset..],
        offset: count_offset,
    };
    let count = entries.u32("entry count")?;
    let mut members = BTreeMap::new();
    for _ in 0..count {
        let node = entries.u64("node id")?;
        let length = entries.u16("addresses length")?;
        let encoded = entries.take(usize::from(length), "addresses")?;
        if node == 0 {
            return Err(AddressFileFormatError::ZeroNode);
        }
        let addresses = match MemberAddresses::decode(encoded) {
            Ok(Some(addresses)) => addresses,
            Ok(None) => return Err(AddressFileFormatError::MissingAddresses { node }),
            Err(source) => return Err(AddressFileFormatError::BadAddresses { node, source }),
        };
        if members.insert(NodeId(node), addresses).is_some() {
            return Err(AddressFileFormatError::DuplicateNode { node });
        }
    }
    if !entries.bytes.is_empty() {
        return Err(AddressFileFormatError::TrailingBytes {
            bytes: entries.bytes.len(),
        });
    }
    Ok(members)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn take(
        &mut self,
        count: usize,
        field: &'static str,
    ) -> Result<&'a [u8], AddressFileFormatError> {
        if self.bytes.len() < count {
            return Err(AddressFileFormatError::Truncated {
                offset: self.offset + self.bytes.len(),
                field,
            });
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        self.offset += count;
        Ok(taken)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, AddressFileFormatError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_le_bytes(bytes.try_into().expect("2 bytes taken")))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, AddressFileFormatError> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes taken")))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, AddressFileFormatError> {
        let bytes = self.take(8, field)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes taken")))
    }
}

/// Reads the file at `path`; `Ok(None)` when it does not exist, as on a new node.
///
/// # Errors
/// A failed read, and any invalid content, naming `path`.
pub fn load(path: &Path) -> Result<Option<BTreeMap<NodeId, MemberAddresses>>, AddressFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("reading", path, error)),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|source| AddressFileError::Invalid {
            path: path.to_path_buf(),
            source,
        })
}

/// Replaces the file at `path` with `members`: writes `<path>.tmp`, fdatasyncs it, renames
/// it over `path` and fsyncs the directory.
///
/// NOTE: these are blocking std::fs calls, and shards call this from their glommio
/// executor threads. The file is a few hundred bytes and is written only when a membership
/// change brings new addresses, so the stall is one small write and two syncs per change.
///
/// # Errors
/// The step that failed, naming its file.
pub fn store(
    path: &Path,
    members: &BTreeMap<NodeId, MemberAddresses>,
) -> Result<(), AddressFileError> {
    let temporary = path.with_extension("tmp");
    let bytes = encode(members);
    let mut file = std::fs::File::create(&temporary)
        .map_err(|error| io_error("creating", &temporary, error))?;
    file.write_all(&bytes)
        .map_err(|error| io_error("writing", &temporary, error))?;
    file.sync_data()
        .map_err(|error| io_error("syncing", &temporary, error))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(|error| io_error("renaming", &temporary, error))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error("syncing the directory of", path, error))
}

fn io_error(operation: &'static str, path: &Path, source: io::Error) -> AddressFileError {
    AddressFileError::Io {
        operation,
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> BTreeMap<NodeId, MemberAddresses> {
        let mut members = BTreeMap::new();
        members.insert(
            NodeId(4),
            MemberAddresses {
                peer: "127.0.0.1:7040".parse().unwrap(),
                client: Some("127.0.0.1:7104".parse().unwrap()),
                http: Some("[::1]:7204".parse().unwrap()),
            },
        );
        members.insert(
            NodeId(5),
            MemberAddresses {
                peer: "[::1]:7050".parse().unwrap(),
                client: None,
                http: None,
            },
        );
        members
    }

    /// Builds a file of raw `(node, encoded addresses)` entries with a valid CRC-32, to
    /// reach the checks behind the checksum.
    fn file_with(entries: &[(u64, &[u8])], trailing: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(ADDRESS_FILE_VERSION);
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (node, encoded) in entries {
            out.extend_from_slice(&node.to_le_bytes());
            out.extend_from_slice(&(encoded.len() as u16).to_le_bytes());
            out.extend_from_slice(encoded);
        }
        out.extend_from_slice(trailing);
        let checksum = crc32fast::hash(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    #[test]
    fn address_file_round_trips() {
        assert_eq!(decode(&encode(&book())), Ok(book()));
    }

    #[test]
    fn empty_book_round_trips() {
        let empty = BTreeMap::new();
        let encoded = encode(&empty);
        assert_eq!(encoded.len(), HEADER_BYTES + CHECKSUM_BYTES);
        assert_eq!(decode(&encoded), Ok(empty));
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let encoded = encode(&book());
        for byte in 0..encoded.len() {
            for bit in 0..8 {
                let mut flipped = encoded.clone();
                flipped[byte] ^= 1 << bit;
                let result = decode(&flipped);
                let expected = match byte {
                    0..4 => matches!(result, Err(AddressFileFormatError::BadMagic { .. })),
                    4 => matches!(result, Err(AddressFileFormatError::UnknownVersion { .. })),
                    _ => matches!(result, Err(AddressFileFormatError::ChecksumMismatch { .. })),
                };
                assert!(expected, "byte {byte} bit {bit}: {result:?}");
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for members in [book(), BTreeMap::new()] {
            let encoded = encode(&members);
            for length in 0..encoded.len() {
                let result = decode(&encoded[..length]);
                assert!(
                    matches!(
                        result,
                        Err(AddressFileFormatError::Truncated { .. }
                            | AddressFileFormatError::ChecksumMismatch { .. })
                    ),
                    "length {length}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut encoded = encode(&book());
        encoded[4] = ADDRESS_FILE_VERSION + 1;
        assert_eq!(
            decode(&encoded),
            Err(AddressFileFormatError::UnknownVersion {
                found: ADDRESS_FILE_VERSION + 1
            })
        );
    }

    #[test]
    fn invalid_entries_behind_checksum_are_rejected() {
        let valid = book()[&NodeId(4)].encode();
        let mut bad_family = valid.to_vec();
        bad_family[1] = 5;
        let cases: Vec<(Vec<u8>, AddressFileFormatError)> = vec![
            (
                file_with(&[(0, &valid)], &[]),
                AddressFileFormatError::ZeroNode,
            ),
            (
                file_with(&[(4, &valid), (4, &valid)], &[]),
                AddressFileFormatError::DuplicateNode { node: 4 },
            ),
            (
                file_with(&[(4, &[])], &[]),
                AddressFileFormatError::MissingAddresses { node: 4 },
            ),
            (
                file_with(&[(4, &bad_family)], &[]),
                AddressFileFormatError::BadAddresses {
                    node: 4,
                    source: ContextError::UnknownFamily { family: 5 },
                },
            ),
            (
                file_with(&[(4, &valid)], &[0, 0, 0]),
                AddressFileFormatError::TrailingBytes { bytes: 3 },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode(&bytes), Err(expected));
        }
    }

    #[test]
    fn entry_count_beyond_entries_is_rejected() {
        let mut bytes = file_with(&[], &[]);
        bytes.truncate(bytes.len() - CHECKSUM_BYTES);
        bytes[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        let checksum = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(AddressFileFormatError::Truncated {
                offset: HEADER_BYTES,
                field: "node id"
            })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for length in 0..256 {
            let mut bytes: Vec<u8> = (0..length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode(&bytes);
            // The same bytes behind a valid header and checksum reach the entry parser.
            let mut framed = MAGIC.to_vec();
            framed.push(ADDRESS_FILE_VERSION);
            framed.append(&mut bytes);
            let checksum = crc32fast::hash(&framed);
            framed.extend_from_slice(&checksum.to_le_bytes());
            let _ = decode(&framed);
        }
    }

    #[test]
    fn store_then_load_round_trips() {
        let dir =
            std::env::temp_dir().join(format!("shardraft-address-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(ADDRESS_FILE_NAME);
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(load(&path), Ok(None)),
            "a missing file is no error"
        );
        store(&path, &book()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(book()));
        assert!(
            !path.with_extension("tmp").exists(),
            "the temporary file was renamed"
        );
        std::fs::write(&path, b"SRMA").unwrap();
        let error = load(&path).unwrap_err();
        assert!(
            matches!(&error, AddressFileError::Invalid { path: named, .. } if *named == path),
            "{error:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
