//! Embeds a 3-node shardraft cluster in one process with an application-defined state
//! machine: a ledger of account balances, changed by transfer commands.
//!
//! Each node has its own shards, write-ahead log (in a temporary directory, with
//! fdatasync) and TCP connections on loopback. The example makes transfers through the
//! leader, reads balances linearizably and from a follower, restarts the cluster and checks
//! that every balance survived.
//!
//! Run with `cargo run -p shardraft --example embed --release`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardraft::config::{MemberConfig, NodeConfig};
use shardraft::log::{GroupId, StorageKind};
use shardraft::node::{Node, NodeError, NodeHandle, ReadMode};
use shardraft::raft::{LogIndex, Term};
use shardraft::state_machine::{Snapshot, SnapshotView, StateMachine};

/// Account balances in cents. Commands are text: `transfer FROM TO CENTS` or
/// `deposit ACCOUNT CENTS`.
#[derive(Debug, Default)]
struct Ledger {
    balances: Rc<BTreeMap<String, i64>>,
    applied_index: LogIndex,
    applied_term: Term,
}

/// What one command did.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LedgerOutput {
    Done,
    Rejected(String),
}

impl Ledger {
    fn execute(&mut self, command: &str) -> LedgerOutput {
        let words: Vec<&str> = command.split_whitespace().collect();
        let balances = Rc::make_mut(&mut self.balances);
        match words.as_slice() {
            ["deposit", account, cents] => match cents.parse::<i64>() {
                Ok(cents) if cents > 0 => {
                    *balances.entry(account.to_string()).or_default() += cents;
                    LedgerOutput::Done
                }
                _ => LedgerOutput::Rejected(format!("invalid amount {cents:?}")),
            },
            ["transfer", from, to, cents] => {
                let Ok(cents) = cents.parse::<i64>() else {
                    return LedgerOutput::Rejected(format!("invalid amount {cents:?}"));
                };
                let available = balances.get(*from).copied().unwrap_or(0);
                if cents <= 0 || available < cents {
                    return LedgerOutput::Rejected(format!(
                        "{from} has {available} cents, cannot send {cents}"
                    ));
                }
                *balances.entry(from.to_string()).or_default() -= cents;
                *balances.entry(to.to_string()).or_default() += cents;
                LedgerOutput::Done
            }
            _ => LedgerOutput::Rejected(format!("unknown command {command:?}")),
        }
    }

    fn balance(&self, account: &str) -> i64 {
        self.balances.get(account).copied().unwrap_or(0)
    }
}

struct LedgerView {
    balances: Rc<BTreeMap<String, i64>>,
    index: LogIndex,
    term: Term,
}

impl SnapshotView for LedgerView {
    fn index(&self) -> LogIndex {
        self.index
    }

    fn term(&self) -> Term {
        self.term
    }

    fn serialize(&self) -> Snapshot {
        let text: String = self
            .balances
            .iter()
            .map(|(account, cents)| format!("{account} {cents}\n"))
            .collect();
        Snapshot {
            index: self.index,
            term: self.term,
            data: Bytes::from(text),
        }
    }
}

impl StateMachine for Ledger {
    type Output = LedgerOutput;
    type View = LedgerView;
    type RestoreError = std::num::ParseIntError;

    fn apply_command(&mut self, index: LogIndex, term: Term, command: &Bytes) -> LedgerOutput {
        self.applied_index = index;
        self.applied_term = term;
        match std::str::from_utf8(command) {
            Ok(command) => self.execute(command),
            Err(_) => LedgerOutput::Rejected("the command is not UTF-8".to_string()),
        }
    }

    fn apply_noop(&mut self, index: LogIndex, term: Term) {
        self.applied_index = index;
        self.applied_term = term;
    }

    fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    fn applied_term(&self) -> Term {
        self.applied_term
    }

    fn snapshot_view(&self) -> LedgerView {
        LedgerView {
            balances: Rc::clone(&self.balances),
            index: self.applied_index,
            term: self.applied_term,
        }
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), Self::RestoreError> {
        let mut balances = BTreeMap::new();
        for line in String::from_utf8_lossy(&snapshot.data).lines() {
            if let Some((account, cents)) = line.split_once(' ') {
                balances.insert(account.to_string(), cents.parse()?);
            }
        }
        self.balances = Rc::new(balances);
        self.applied_index = snapshot.index;
        self.applied_term = snapshot.term;
        Ok(())
    }
}

fn cluster_configs(data_dir: &std::path::Path) -> anyhow::Result<Vec<NodeConfig>> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let addresses: Vec<SocketAddr> = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()?;
    drop(listeners);
    let members: Vec<MemberConfig> = addresses
        .iter()
        .zip(1..)
        .map(|(address, id)| MemberConfig {
            id,
            addresses: vec![*address],
        })
        .collect();
    let mut configs = Vec::new();
    for node_id in 1..=3u64 {
        let mut config = NodeConfig {
            node_id,
            members: members.clone(),
            shards: Some(1),
            groups: 1,
            ..NodeConfig::default()
        };
        config.log.storage = StorageKind::Disk;
        config.log.data_dir = data_dir.join(format!("node-{node_id}"));
        config.log.segment_bytes = 8 << 20;
        std::fs::create_dir_all(&config.log.data_dir)?;
        configs.push(config);
    }
    Ok(configs)
}

fn start(configs: &[NodeConfig]) -> anyhow::Result<Vec<Node<Ledger>>> {
    let mut nodes = Vec::new();
    for config in configs {
        nodes.push(Node::start(config.clone(), |_| Ledger::default())?);
    }
    Ok(nodes)
}

/// Finds the leader of group 0 by proposing a harmless deposit until a node accepts it.
fn find_leader(handles: &[NodeHandle<Ledger>]) -> anyhow::Result<NodeHandle<Ledger>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for handle in handles {
            if let Ok(Some(leader)) = handle.leader(GroupId(0))
                && leader == handle.node_id()
            {
                return Ok(handle.clone());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no leader was elected within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn propose(handle: &NodeHandle<Ledger>, command: &str) -> Result<LedgerOutput, NodeError> {
    let applied = handle.propose(GroupId(0), Bytes::from(command.to_string()))?;
    println!(
        "  {command:<28} -> index {:>3}: {:?}",
        applied.index.0, applied.output
    );
    Ok(applied.output)
}

fn main() -> anyhow::Result<()> {
    // Logs go to stderr, filtered by RUST_LOG (for example RUST_LOG=info).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let data_dir = std::env::temp_dir().join(format!("shardraft-embed-{}", std::process::id()));
    let configs = cluster_configs(&data_dir)?;
    let nodes = start(&configs)?;
    let handles: Vec<NodeHandle<Ledger>> = nodes.iter().map(Node::handle).collect();
    let leader = find_leader(&handles)?;
    println!("3 nodes started; node {} leads group 0", leader.node_id().0);

    let started = Instant::now();
    propose(&leader, "deposit alice 10000")?;
    propose(&leader, "deposit bob 2500")?;
    propose(&leader, "transfer alice bob 4000")?;
    propose(&leader, "transfer bob carol 7000")?;
    propose(&leader, "transfer carol alice 10000")?;
    let transfers = 200;
    for i in 0..transfers {
        let (from, to) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        let command = format!("transfer {from} {to} 1");
        leader.propose(GroupId(0), Bytes::from(command))?;
    }
    println!(
        "  ... and {transfers} more transfers, each durable on a majority: {:.1} ms in all",
        started.elapsed().as_secs_f64() * 1000.0
    );

    let read = |handle: &NodeHandle<Ledger>, mode| {
        handle.read(GroupId(0), mode, |ledger: &Ledger| {
            (
                ledger.balance("alice"),
                ledger.balance("bob"),
                ledger.balance("carol"),
            )
        })
    };
    let balances = read(&leader, ReadMode::Linearizable)?;
    println!("linearizable read at the leader: alice, bob, carol = {balances:?}");
    let follower = handles
        .iter()
        .find(|handle| handle.node_id() != leader.node_id());
    if let Some(follower) = follower {
        std::thread::sleep(Duration::from_millis(100));
        let stale = read(follower, ReadMode::Stale)?;
        println!("stale read at node {}: {stale:?}", follower.node_id().0);
    }

    drop(handles);
    for node in nodes {
        node.shutdown()?;
    }
    println!("cluster stopped; restarting it from its logs");

    let nodes = start(&configs)?;
    let handles: Vec<NodeHandle<Ledger>> = nodes.iter().map(Node::handle).collect();
    let leader = find_leader(&handles)?;
    let after_restart = read(&leader, ReadMode::Linearizable)?;
    println!(
        "after restart node {} leads; balances = {after_restart:?}",
        leader.node_id().0
    );
    anyhow::ensure!(
        after_restart == balances,
        "balances changed across the restart"
    );
    let total = after_restart.0 + after_restart.1 + after_restart.2;
    anyhow::ensure!(total == 12_500, "money was created or lost: total {total}");
    println!("every balance survived the restart; total {total} cents");

    drop(handles);
    for node in nodes {
        node.shutdown()?;
    }
    std::fs::remove_dir_all(&data_dir)?;
    Ok(())
}
