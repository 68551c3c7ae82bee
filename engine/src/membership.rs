//! Membership of the cluster at runtime: the addresses a new member brings, carried in
//! the `context` bytes of its membership-change entry, and the node-wide book of every
//! member's addresses that the shards keep up to date as change entries arrive.
//!
//! Every node learns a new member's addresses from the log itself: the leader stores them
//! in the `AddLearner` entry, followers receive the entry through replication, and a node
//! restarting replays it. So no side channel has to reach every node before the change.
//!
//! Context encoding, version 1, all integers little-endian:
//!
//! ```text
//! version         u8 = 1
//! peer address    address (shard 0's peer port; shard s listens on that port + s)
//! client address  u8 present (0 or 1), then an address when present
//! http address    u8 present (0 or 1), then an address when present
//! address         u8 family (4 or 6), 4 or 16 address bytes, u16 port
//! ```
//!
//! An empty context means "no addresses": automatic promotions and removals carry none.
//! Decoding checks every byte and rejects trailing bytes, so a corrupt or foreign
//! context is reported instead of misread.
//!
//! A snapshot compacts change entries away, so a node on disk storage also keeps its
//! address book in the member address file, `<data_dir>/member-addresses`, and reads it
//! back when it starts.

mod address_file;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use bytes::Bytes;
use shardraft_raft::{LogIndex, NodeId, Term};

use crate::config::MemberConfig;
use crate::log::GroupId;

pub use address_file::{
    ADDRESS_FILE_NAME, ADDRESS_FILE_VERSION, AddressFileError, AddressFileFormatError,
};

/// The context encoding version this build writes and reads.
pub const MEMBER_CONTEXT_VERSION: u8 = 1;

/// The addresses a member listens on for peers, clients and HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAddresses {
    /// Peer address of the member's shard 0; shard `s` listens on this port plus `s`.
    pub peer: SocketAddr,
    /// The member's client address, if it serves clients.
    pub client: Option<SocketAddr>,
    /// The member's HTTP address, if it serves metrics and status.
    pub http: Option<SocketAddr>,
}

/// The reason a membership-change context could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error(
        "member addresses of encoding version {found}; this build reads version \
         {MEMBER_CONTEXT_VERSION}, so upgrade this node"
    )]
    UnknownVersion { found: u8 },
    #[error("member addresses cut off at byte {offset} while reading the {field}")]
    Truncated { offset: usize, field: &'static str },
    #[error("member addresses with address family {family}; only 4 and 6 exist")]
    UnknownFamily { family: u8 },
    #[error("member addresses with presence flag {flag} for the {field}; only 0 and 1 exist")]
    BadFlag { flag: u8, field: &'static str },
    #[error("member addresses with {bytes} bytes after the last field")]
    TrailingBytes { bytes: usize },
    #[error("member addresses with port 0 for the {field}; give the port it listens on")]
    ZeroPort { field: &'static str },
}

impl MemberAddresses {
    /// Returns the peer address of shard `shard` of this member: the base port plus the
    /// shard number, `None` past port 65535.
    pub fn shard_address(&self, shard: usize) -> Option<SocketAddr> {
        let port = u16::try_from(usize::from(self.peer.port()) + shard).ok()?;
        Some(SocketAddr::new(self.peer.ip(), port))
    }

    /// The context bytes of a membership change that adds this member.
    pub fn encode(&self) -> Bytes {
        let mut out = vec![MEMBER_CONTEXT_VERSION];
        write_address(&mut out, self.peer);
        for address in [self.client, self.http] {
            match address {
                Some(address) => {
                    out.push(1);
                    write_address(&mut out, address);
                }
                None => out.push(0),
            }
        }
        Bytes::from(out)
    }

    /// Reads the context of a membership change; `Ok(None)` for an empty context.
    ///
    /// # Errors
    /// What is wrong with the bytes; never panics on any input.
    pub fn decode(context: &[u8]) -> Result<Option<MemberAddresses>, ContextError> {
        let Some((&version, rest)) = context.split_first() else {
            return Ok(None);
        };
        if version != MEMBER_CONTEXT_VERSION {
            return Err(ContextError::UnknownVersion { found: version });
        }
        let mut reader = Reader {
            bytes: rest,
            offset: 1,
        };
        let peer = reader.address("peer address")?;
        let client = reader.optional_address("client address")?;
        let http = reader.optional_address("http address")?;
        if !reader.bytes.is_empty() {
            return Err(ContextError::TrailingBytes {
                bytes: reader.bytes.len(),
            });
        }
        Ok(Some(MemberAddresses { peer, client, http }))
    }
}

fn write_address(out: &mut Vec<u8>, address: SocketAddr) {
    match address.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&address.port().to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize, field: &'static str) -> Result<&[u8], ContextError> {
        if self.bytes.len() < count {
            return Err(ContextError::Truncated {
                offset: self.offset + self.bytes.len(),
                field,
            });
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        self.offset += count;
        Ok(taken)
    }

    fn address(&mut self, field: &'static str) -> Result<SocketAddr, ContextError> {
        let family = self.take(1, field)?[0];
        let ip = match family {
            4 => {
                let octets: [u8; 4] = self.take(4, field)?.try_into().expect("4 bytes taken");
                IpAddr::V4(Ipv4Addr::from(octets))
            }
            6 => {
                let octets: [u8; 16] = self.take(16, field)?.try_into().expect("16 bytes taken");
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            family => return Err(ContextError::UnknownFamily { family }),
        };
        let port_bytes = self.take(2, field)?;
        let port = u16::from_le_bytes([port_bytes[0], port_bytes[1]]);
        if port == 0 {
            return Err(ContextError::ZeroPort { field });
        }
        Ok(SocketAddr::new(ip, port))
    }

    fn optional_address(
        &mut self,
        field: &'static str,
    ) -> Result<Option<SocketAddr>, ContextError> {
        match self.take(1, field)?[0] {
            0 => Ok(None),
            1 => self.address(field).map(Some),
            flag => Err(ContextError::BadFlag { flag, field }),
        }
    }
}

/// A change of one group's membership, as the runtime API takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Adds `node` as a learner, reachable at `addresses`. With `promote_when_caught_up`,
    /// the leader promotes it to voter once its log is within
    /// `raft.promote_lag_entries_max` entries of the leader's (the server's
    /// `promote_lag_entries_max` key).
    AddLearner {
        node: NodeId,
        addresses: MemberAddresses,
        promote_when_caught_up: bool,
    },
    /// Makes the learner `node` a voter.
    Promote { node: NodeId },
    /// Removes `node`. Removing the leader first hands leadership to another voter.
    Remove { node: NodeId },
}

impl MemberChange {
    /// The node the change is about.
    pub fn node(&self) -> NodeId {
        match self {
            MemberChange::AddLearner { node, .. }
            | MemberChange::Promote { node }
            | MemberChange::Remove { node } => *node,
        }
    }

    /// The core's change and the entry's context bytes.
    pub(crate) fn to_core(&self) -> (shardraft_raft::MembershipChange, Bytes) {
        use shardraft_raft::MembershipChange as Core;
        match self {
            MemberChange::AddLearner {
                node,
                addresses,
                promote_when_caught_up,
            } => (
                Core::AddLearner {
                    node: *node,
                    promote_when_caught_up: *promote_when_caught_up,
                },
                addresses.encode(),
            ),
            MemberChange::Promote { node } => (Core::Promote { node: *node }, Bytes::new()),
            MemberChange::Remove { node } => (Core::Remove { node: *node }, Bytes::new()),
        }
    }
}

/// Which groups a membership change applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipScope {
    /// One group.
    Group(GroupId),
    /// Every group this node leads when the call arrives at its shard.
    Led,
    /// Every group of the cluster. Groups this node does not lead return
    /// [`crate::node::NodeError::NotLeader`] with their leader.
    All,
}

/// Whether a member votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    Voter,
    /// Receives the log but does not vote. With `promote_when_caught_up`, the leader
    /// promotes it on its own once it has caught up.
    Learner {
        promote_when_caught_up: bool,
    },
}

/// One member of a group as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberProgress {
    pub node: NodeId,
    pub role: MemberRole,
    /// The highest index known to match the leader's log; known only on the leader (for
    /// itself, its durable index).
    pub match_index: Option<LogIndex>,
    /// Entries the member is behind the leader's last index; known only on the leader.
    pub lag_entries: Option<u64>,
    /// The member's addresses, when this node knows them.
    pub addresses: Option<MemberAddresses>,
}

/// The membership of one group as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMembership {
    pub group: GroupId,
    /// The node answering.
    pub reporter: NodeId,
    pub leader: Option<NodeId>,
    pub term: Term,
    pub commit_index: LogIndex,
    pub last_index: LogIndex,
    /// The index of the newest membership change, when it is not committed yet.
    pub pending_change: Option<LogIndex>,
    /// Voters first, then learners, each in node id order.
    pub members: Vec<MemberProgress>,
}

/// The addresses of every member any shard of this node has learned of: the configured
/// members and those added at runtime. Shards write it, the client service reads it for
/// its hello and redirects. On disk storage it also writes itself to the member address
/// file whenever it learns new addresses.
#[derive(Debug, Default)]
pub(crate) struct AddressBook {
    members: RwLock<Members>,
    file: Option<BookFile>,
}

#[derive(Debug, Default)]
struct Members {
    addresses: BTreeMap<NodeId, MemberAddresses>,
    /// Incremented by every change to `addresses` that the file should hold.
    version: u64,
}

/// The book's file and the version of the book last written to it.
#[derive(Debug)]
struct BookFile {
    path: PathBuf,
    /// Held while the file is written, so that shards write one at a time and the file
    /// never goes back to an older version.
    stored_version: Mutex<u64>,
}

fn configured_addresses(members: &[MemberConfig]) -> BTreeMap<NodeId, MemberAddresses> {
    members
        .iter()
        .filter_map(|member| {
            let peer = *member.addresses.first()?;
            let addresses = MemberAddresses {
                peer,
                client: None,
                http: None,
            };
            Some((NodeId(member.id), addresses))
        })
        .collect()
}

impl AddressBook {
    /// Creates a book of the configured members that keeps no file. Their client and HTTP
    /// addresses are not in the node's config, so they stay `None` until the server or a
    /// change entry names them.
    pub fn from_config(members: &[MemberConfig]) -> AddressBook {
        AddressBook {
            members: RwLock::new(Members {
                addresses: configured_addresses(members),
                version: 0,
            }),
            file: None,
        }
    }

    /// Creates a book of the configured members plus the members of the address file in
    /// `data_dir`, and stores later changes in that file. The config decides the
    /// addresses of every member it lists, and the file adds only the members it does not
    /// list (those added at runtime). A missing file adds nothing.
    ///
    /// # Errors
    /// An unreadable or invalid file, naming it and what the operator can do.
    pub fn on_disk(
        members: &[MemberConfig],
        data_dir: &Path,
    ) -> Result<AddressBook, AddressFileError> {
        let path = data_dir.join(ADDRESS_FILE_NAME);
        let mut addresses = configured_addresses(members);
        match address_file::load(&path)? {
            Some(stored) => {
                let mut restored = 0;
                for (node, stored) in stored {
                    if let Entry::Vacant(entry) = addresses.entry(node) {
                        entry.insert(stored);
                        restored += 1;
                    }
                }
                tracing::info!(path = %path.display(), restored, "read the member address file");
            }
            None => tracing::info!(
                path = %path.display(),
                "no member address file yet; it is written at the first membership change"
            ),
        }
        Ok(AddressBook {
            members: RwLock::new(Members {
                addresses,
                version: 0,
            }),
            file: Some(BookFile {
                path,
                stored_version: Mutex::new(0),
            }),
        })
    }

    /// Records `addresses` of `node`, replacing what was known, and stores the book when
    /// that changed it or when an earlier store failed.
    ///
    /// # Errors
    /// A failed store. The book in memory contains the addresses anyway, and the next call
    /// tries the store again.
    pub fn learn(&self, node: NodeId, addresses: MemberAddresses) -> Result<(), AddressFileError> {
        self.record(node, addresses, true)
    }

    /// Records `addresses` of `node` only when the book knows none for it. Replaying a log
    /// at start uses it: the book read from the file is newer than any entry still in a
    /// log, whose later changes of the same member may have been compacted away.
    pub fn learn_missing(
        &self,
        node: NodeId,
        addresses: MemberAddresses,
    ) -> Result<(), AddressFileError> {
        self.record(node, addresses, false)
    }

    fn record(
        &self,
        node: NodeId,
        addresses: MemberAddresses,
        replace: bool,
    ) -> Result<(), AddressFileError> {
        {
            let mut members = self
                .members
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let known = members.addresses.get(&node);
            let changes = match known {
                None => true,
                Some(known) => replace && *known != addresses,
            };
            if changes {
                members.addresses.insert(node, addresses);
                members.version += 1;
            }
        }
        self.store()
    }

    /// Writes the book to its file unless the file already contains this version.
    fn store(&self) -> Result<(), AddressFileError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut stored_version = file
            .stored_version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Copied under the read lock and written after it, so that readers never wait for
        // the syncs. The file mutex keeps a slower writer from storing an older copy last.
        let (version, addresses) = {
            let members = self
                .members
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if members.version == *stored_version {
                return Ok(());
            }
            (members.version, members.addresses.clone())
        };
        address_file::store(&file.path, &addresses)?;
        *stored_version = version;
        tracing::info!(
            path = %file.path.display(), members = addresses.len(),
            "stored the member address file"
        );
        Ok(())
    }

    /// Records the client and HTTP addresses of a configured member, keeping its peer
    /// address. The file is not written for these, because the server passes them again
    /// at every start and the config decides the addresses of configured members.
    pub fn learn_service_addresses(
        &self,
        node: NodeId,
        client: Option<SocketAddr>,
        http: Option<SocketAddr>,
    ) {
        let mut members = self
            .members
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(known) = members.addresses.get_mut(&node) {
            known.client = known.client.or(client);
            known.http = known.http.or(http);
        }
    }

    pub fn get(&self, node: NodeId) -> Option<MemberAddresses> {
        let members = self
            .members
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        members.addresses.get(&node).cloned()
    }

    pub fn all(&self) -> BTreeMap<NodeId, MemberAddresses> {
        let members = self
            .members
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        members.addresses.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses() -> MemberAddresses {
        MemberAddresses {
            peer: "127.0.0.1:7040".parse().unwrap(),
            client: Some("127.0.0.1:7104".parse().unwrap()),
            http: None,
        }
    }

    #[test]
    fn replayed_addresses_do_not_replace_known_ones() {
        let book = AddressBook::default();
        let newer = addresses();
        let mut older = addresses();
        older.peer = "127.0.0.1:7050".parse().unwrap();
        book.learn(NodeId(4), newer.clone()).unwrap();

        book.learn_missing(NodeId(4), older.clone()).unwrap();
        assert_eq!(book.get(NodeId(4)), Some(newer));

        book.learn_missing(NodeId(5), older.clone()).unwrap();
        assert_eq!(book.get(NodeId(5)), Some(older.clone()));
        let replaced = addresses();
        book.learn(NodeId(5), replaced.clone()).unwrap();
        assert_eq!(book.get(NodeId(5)), Some(replaced));
    }

    #[test]
    fn addresses_round_trip() {
        let encoded = addresses().encode();
        assert_eq!(MemberAddresses::decode(&encoded), Ok(Some(addresses())));
    }

    #[test]
    fn ipv6_addresses_round_trip() {
        let mut six = addresses();
        six.http = Some("[::1]:9000".parse().unwrap());
        assert_eq!(MemberAddresses::decode(&six.encode()), Ok(Some(six)));
    }

    #[test]
    fn empty_context_has_no_addresses() {
        assert_eq!(MemberAddresses::decode(&[]), Ok(None));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let encoded = addresses().encode();
        for length in 1..encoded.len() {
            let result = MemberAddresses::decode(&encoded[..length]);
            assert!(
                matches!(result, Err(ContextError::Truncated { .. })),
                "length {length}: {result:?}"
            );
        }
    }

    #[test]
    fn unknown_version_and_trailing_bytes_are_rejected() {
        let mut encoded = addresses().encode().to_vec();
        encoded.push(0);
        assert_eq!(
            MemberAddresses::decode(&encoded),
            Err(ContextError::TrailingBytes { bytes: 1 })
        );
        encoded[0] = 9;
        assert_eq!(
            MemberAddresses::decode(&encoded),
            Err(ContextError::UnknownVersion { found: 9 })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for length in 0..64 {
            let bytes: Vec<u8> = (0..length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 8) as u8
                })
                .collect();
            let _ = MemberAddresses::decode(&bytes);
        }
    }

    #[test]
    fn shard_addresses_follow_the_base_port() {
        assert_eq!(addresses().shard_address(2).unwrap().port(), 7042);
    }

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardraft-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn configured(id: u64, address: &str) -> MemberConfig {
        MemberConfig {
            id,
            addresses: vec![address.parse().unwrap()],
        }
    }

    #[test]
    fn book_restores_runtime_members() {
        let dir = test_dir("book-restores");
        let members = [
            configured(1, "127.0.0.1:7010"),
            configured(2, "127.0.0.1:7020"),
        ];
        let book = AddressBook::on_disk(&members, &dir).unwrap();
        assert!(
            !dir.join(ADDRESS_FILE_NAME).exists(),
            "nothing learned, nothing written"
        );
        book.learn(NodeId(4), addresses()).unwrap();
        let moved = MemberAddresses {
            peer: "127.0.0.1:7999".parse().unwrap(),
            client: None,
            http: None,
        };
        book.learn(NodeId(2), moved).unwrap();
        drop(book);

        let reopened = AddressBook::on_disk(&members, &dir).unwrap();
        assert_eq!(reopened.get(NodeId(4)), Some(addresses()));
        assert_eq!(
            reopened.get(NodeId(2)).map(|known| known.peer),
            Some("127.0.0.1:7020".parse().unwrap()),
            "the config decides a configured member's peer address"
        );
        assert_eq!(reopened.all().len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn book_stores_only_changes() {
        let dir = test_dir("book-stores-changes");
        let book = AddressBook::on_disk(&[], &dir).unwrap();
        let path = dir.join(ADDRESS_FILE_NAME);
        book.learn(NodeId(4), addresses()).unwrap();
        assert!(path.exists());
        // A second store of the same addresses would recreate the removed file.
        std::fs::remove_file(&path).unwrap();
        book.learn(NodeId(4), addresses()).unwrap();
        assert!(!path.exists(), "unchanged addresses are not stored again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn book_retries_failed_store() {
        let dir = test_dir("book-retries");
        let book = AddressBook::on_disk(&[], &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let failed = book.learn(NodeId(4), addresses());
        assert!(
            matches!(failed, Err(AddressFileError::Io { .. })),
            "{failed:?}"
        );
        std::fs::create_dir_all(&dir).unwrap();
        book.learn(NodeId(4), addresses()).unwrap();
        assert_eq!(
            address_file::load(&dir.join(ADDRESS_FILE_NAME)).unwrap(),
            Some(BTreeMap::from([(NodeId(4), addresses())]))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn book_rejects_corrupt_file() {
        let dir = test_dir("book-corrupt");
        let path = dir.join(ADDRESS_FILE_NAME);
        std::fs::write(&path, b"SRMA\x01garbage").unwrap();
        let error = AddressBook::on_disk(&[], &dir).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, AddressFileError::Invalid { .. }),
            "{error:?}"
        );
        assert!(message.contains(&path.display().to_string()), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_book_keeps_no_file() {
        let book = AddressBook::from_config(&[configured(1, "127.0.0.1:7010")]);
        book.learn(NodeId(4), addresses()).unwrap();
        assert_eq!(book.get(NodeId(4)), Some(addresses()));
    }
}
