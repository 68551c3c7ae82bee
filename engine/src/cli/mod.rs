//! The client commands of the `shardraft` command line: `put`, `get`, `del`, `cas`,
//! `scan`, `status`, `member add|remove|promote|list` and `leader transfer`, run against
//! a cluster through [`crate::client`].
//!
//! Exit status: 0 on success, 1 on failure with a one-line message on stderr, 2 for a
//! usage error, and 3 when `get` finds no value or the `cas` condition does not hold. A
//! membership command that covers several groups exits with 1 when any group failed,
//! after printing every group's outcome.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::client::{CasCondition, Client, ClientConfig, ClientError};
use crate::kv::{ScanPage, ScanRange, VersionedValue};
use crate::protocol::{MembershipChangeRequest, MembershipReport, StatusReport};

/// The client addresses of the local example cluster, the endpoints used when
/// `--endpoints` is not given.
pub const DEFAULT_CLIENT_ADDRESSES: [&str; 3] =
    ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"];

/// [`DEFAULT_CLIENT_ADDRESSES`] as the `--endpoints` default.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// How results are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// Values alone, or `key = value` lines.
    #[default]
    Text,
    /// One JSON object per command.
    Json,
}

/// Options shared by every client command.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Client addresses of cluster members, comma-separated; the default is the local
    /// example cluster, 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103.
    #[arg(long, global = true, value_delimiter = ',', default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: Vec<String>,
    /// The cluster id the servers must have; any cluster when not given.
    #[arg(long, global = true)]
    pub cluster_id: Option<u64>,
    /// How results are printed.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Read keys and values given on the command line as hexadecimal, and print them so.
    #[arg(long, global = true)]
    pub hex: bool,
    /// The time one command may take, redirects and retries included, in milliseconds.
    #[arg(long, global = true, default_value_t = 5_000)]
    pub timeout_ms: u64,
}

/// The client commands.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    /// Set KEY to VALUE (or to the contents of --value-file).
    Put {
        /// The key.
        key: String,
        /// The value; omit it with --value-file.
        value: Option<String>,
        /// Read the value from this file, as raw bytes.
        #[arg(long, conflicts_with = "value")]
        value_file: Option<PathBuf>,
    },
    /// Print the value of KEY; exit status 3 when it has none.
    Get {
        /// The key.
        key: String,
        /// Read the first reachable replica without confirming leadership; may miss
        /// recent writes.
        #[arg(long)]
        stale: bool,
    },
    /// Delete KEY.
    Del {
        /// The key.
        key: String,
    },
    /// Set KEY to NEW only if its value is EXPECTED (or, with --absent, only if it does
    /// not exist, with EXPECTED empty or left out); exit status 3 when it is not.
    Cas {
        /// The key.
        key: String,
        /// The value the key must have; with --absent, empty or left out.
        expected: String,
        /// The new value; omit it with --value-file.
        new: Option<String>,
        /// Swap only if the key does not exist.
        #[arg(long)]
        absent: bool,
        /// Read the new value from this file, as raw bytes.
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// Print the keys that start with PREFIX, in key order.
    Scan {
        /// The key prefix; empty for every key.
        prefix: String,
        /// The maximum number of keys printed.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Read the first reachable replica without confirming leadership.
        #[arg(long)]
        stale: bool,
    },
    /// Print each endpoint's role and progress in every group.
    Status,
    /// Add, remove, promote or list the members of the groups.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Move the leadership of groups.
    #[command(subcommand)]
    Leader(LeaderCommand),
}

/// The `member` commands. Each runs at the leader of every group, or of `--group` alone.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum MemberCommand {
    /// Add node ID, reachable at the given addresses: as a learner that the leader makes a
    /// voter once it has caught up, or with --learner as a learner only. Start the new
    /// node with `shardraft serve --join` first.
    Add {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Its peer address (shard 0's port; shard s listens on the port plus s).
        #[arg(long)]
        peer: String,
        /// Its client address.
        #[arg(long)]
        client: String,
        /// Its HTTP address, if it serves one.
        #[arg(long)]
        http: Option<String>,
        /// Keep it a learner: it receives the log but does not vote.
        #[arg(long)]
        learner: bool,
        /// Change this group only.
        #[arg(long)]
        group: Option<u32>,
    },
    /// Remove node ID. Removing a group's leader first hands leadership to another voter.
    Remove {
        /// The node to remove.
        #[arg(long)]
        id: u64,
        /// Change this group only.
        #[arg(long)]
        group: Option<u32>,
    },
    /// Make the learner ID a voter.
    Promote {
        /// The learner.
        #[arg(long)]
        id: u64,
        /// Change this group only.
        #[arg(long)]
        group: Option<u32>,
    },
    /// Print the voters and learners of every group, with each member's match index and
    /// lag as the leader sees them.
    List {
        /// List this group only.
        #[arg(long)]
        group: Option<u32>,
    },
}

/// The `leader` commands.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum LeaderCommand {
    /// Hand the leadership of every group, or of --group, to node NODE and wait until it
    /// leads.
    Transfer {
        /// The group; every group when not given.
        #[arg(long)]
        group: Option<u32>,
        /// The voter that is to lead.
        #[arg(long)]
        to: u64,
    },
}

/// The client commands with their options, for a binary that has them as its own
/// command line.
#[derive(clap::Parser, Clone, Debug, PartialEq, Eq)]
#[command(about = "Run a command against a shardraft cluster")]
pub struct ClientCli {
    /// The shared options.
    #[command(flatten)]
    pub options: ClientOptions,
    /// The command.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// Exit status for a missing key or a failed compare-and-swap condition.
const EXIT_NOT_FOUND: u8 = 3;

/// Why a command failed, with the exit status it maps to.
enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

/// Runs `command` and returns the process exit status; prints results on stdout and a
/// one-line error on stderr.
pub fn run(command: ClientCommand, options: ClientOptions) -> ExitCode {
    match execute(&command, &options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Client(error)) => {
            let status = match error {
                ClientError::KeyNotFound | ClientError::CasMismatch { .. } => EXIT_NOT_FOUND,
                _ => 1,
            };
            eprintln!("error: {error}");
            ExitCode::from(status)
        }
    }
}

fn execute(command: &ClientCommand, options: &ClientOptions) -> Result<(), Failure> {
    if options
        .endpoints
        .iter()
        .all(|endpoint| endpoint.trim().is_empty())
    {
        return Err(Failure::Usage(
            "--endpoints is empty; give at least one host:port".to_string(),
        ));
    }
    let endpoints: Vec<String> = options
        .endpoints
        .iter()
        .map(|endpoint| endpoint.trim().to_string())
        .filter(|endpoint| !endpoint.is_empty())
        .collect();
    let mut config = ClientConfig::new(endpoints.iter().cloned());
    config.cluster_id = options.cluster_id;
    config.request_timeout = Duration::from_millis(options.timeout_ms.max(1));
    config.connect_timeout = config.request_timeout.min(Duration::from_secs(1));
    let printer = Printer {
        format: options.output,
        hex: options.hex,
    };

    match command {
        ClientCommand::Put {
            key,
            value,
            value_file,
        } => {
            let key = printer.parse("KEY", key)?;
            let value = value_argument(&printer, value.as_deref(), value_file.as_ref(), "VALUE")?;
            let index = Client::connect(config)?.put(&key, &value)?;
            printer.written("stored", index.0);
        }
        ClientCommand::Get { key, stale } => {
            let key = printer.parse("KEY", key)?;
            let client = Client::connect(config)?;
            let found = if *stale {
                client.get_stale(&key)?
            } else {
                client.get(&key)?
            };
            printer.value(&found);
        }
        ClientCommand::Del { key } => {
            let key = printer.parse("KEY", key)?;
            let existed = Client::connect(config)?.delete(&key)?;
            printer.deleted(existed);
        }
        ClientCommand::Cas {
            key,
            expected,
            new,
            absent,
            value_file,
        } => {
            let key = printer.parse("KEY", key)?;
            // With --absent, a lone value after KEY is the new value.
            let (expected, new) = match (absent, new) {
                (true, None) if value_file.is_none() => (None, Some(expected.as_str())),
                (true, _) if !expected.is_empty() => {
                    return Err(Failure::Usage(format!(
                        "--absent takes no expected value, but EXPECTED is {expected:?}; \
                         leave it out or pass \"\""
                    )));
                }
                (true, new) => (None, new.as_deref()),
                (false, new) => (Some(printer.parse("EXPECTED", expected)?), new.as_deref()),
            };
            let new = value_argument(&printer, new, value_file.as_ref(), "NEW")?;
            let condition = match &expected {
                Some(expected) => CasCondition::Value(expected),
                None => CasCondition::Absent,
            };
            let index = Client::connect(config)?.cas(&key, condition, Some(&new))?;
            printer.written("swapped", index.0);
        }
        ClientCommand::Scan {
            prefix,
            limit,
            stale,
        } => {
            let prefix = printer.parse("PREFIX", prefix)?;
            if *limit == 0 {
                return Err(Failure::Usage("--limit 0; give at least 1".to_string()));
            }
            let client = Client::connect(config)?;
            let page = client.scan(&ScanRange::Prefix(prefix), *limit, *stale)?;
            printer.page(&page);
        }
        ClientCommand::Status => {
            let client = Client::connect(config)?;
            let mut reports = Vec::new();
            for endpoint in &endpoints {
                reports.push((endpoint.as_str(), client.status(endpoint)));
            }
            printer.status(&reports);
            if let Some((_, Err(error))) = reports.iter().find(|(_, report)| report.is_err()) {
                return Err(Failure::Client(error.clone()));
            }
        }
        ClientCommand::Member(command) => member(command, config, &printer)?,
        ClientCommand::Leader(LeaderCommand::Transfer { group, to }) => {
            let client = Client::connect(config)?;
            let results: Vec<(u32, Result<String, ClientError>)> = groups(&client, *group)?
                .into_iter()
                .map(|group| {
                    let result = client
                        .transfer_leader(group, *to)
                        .map(|()| format!("node {to} leads"));
                    (group, result)
                })
                .collect();
            printer.group_outcomes(&results)?;
        }
    }
    Ok(())
}

/// The groups a command covers: `--group`, checked, or every group.
fn groups(client: &Client, group: Option<u32>) -> Result<Vec<u32>, Failure> {
    match group {
        Some(group) if group >= client.groups() => Err(Failure::Usage(format!(
            "--group {group} does not exist; the cluster has groups 0 to {}",
            client.groups().saturating_sub(1)
        ))),
        Some(group) => Ok(vec![group]),
        None => Ok((0..client.groups()).collect()),
    }
}

fn member(command: &MemberCommand, config: ClientConfig, printer: &Printer) -> Result<(), Failure> {
    let (change, group, verb) = match command {
        MemberCommand::Add {
            id,
            peer,
            client,
            http,
            learner,
            group,
        } => {
            let change = MembershipChangeRequest::AddLearner {
                node: *id,
                peer_address: peer.clone(),
                client_address: client.clone(),
                http_address: http.clone(),
                promote_when_caught_up: !learner,
            };
            let verb = if *learner {
                "added as a learner"
            } else {
                "added as a learner to promote once caught up"
            };
            (change, *group, verb)
        }
        MemberCommand::Remove { id, group } => (
            MembershipChangeRequest::Remove { node: *id },
            *group,
            "removed",
        ),
        MemberCommand::Promote { id, group } => (
            MembershipChangeRequest::Promote { node: *id },
            *group,
            "promoted",
        ),
        MemberCommand::List { group } => {
            let client = Client::connect(config)?;
            let reports: Vec<(u32, Result<MembershipReport, ClientError>)> =
                groups(&client, *group)?
                    .into_iter()
                    .map(|group| (group, client.membership(group)))
                    .collect();
            printer.memberships(&reports);
            if let Some((_, Err(error))) = reports.iter().find(|(_, report)| report.is_err()) {
                return Err(Failure::Client(error.clone()));
            }
            return Ok(());
        }
    };
    if change.node() == 0 {
        return Err(Failure::Usage("--id 0; node ids start at 1".to_string()));
    }
    let client = Client::connect(config)?;
    let node = change.node();
    let results: Vec<(u32, Result<String, ClientError>)> = groups(&client, group)?
        .into_iter()
        .map(|group| {
            let result = client
                .change_membership(group, change.clone())
                .map(|index| format!("node {node} {verb} at index {}", index.0));
            (group, result)
        })
        .collect();
    printer.group_outcomes(&results)
}

fn value_argument(
    printer: &Printer,
    value: Option<&str>,
    value_file: Option<&PathBuf>,
    name: &str,
) -> Result<Vec<u8>, Failure> {
    match (value, value_file) {
        (Some(_), Some(_)) => Err(Failure::Usage(format!(
            "both {name} and --value-file are given; use one"
        ))),
        (Some(value), None) => printer.parse(name, value),
        (None, Some(path)) => std::fs::read(path).map_err(|error| {
            Failure::Usage(format!(
                "reading --value-file {} failed: {error}",
                path.display()
            ))
        }),
        (None, None) => Err(Failure::Usage(format!(
            "{name} is missing; give it or --value-file PATH"
        ))),
    }
}

/// Formats results in the output format and key encoding that the options select.
struct Printer {
    format: OutputFormat,
    hex: bool,
}

impl Printer {
    fn parse(&self, name: &str, text: &str) -> Result<Vec<u8>, Failure> {
        if !self.hex {
            return Ok(text.as_bytes().to_vec());
        }
        decode_hex(text).map_err(|detail| Failure::Usage(format!("{name} {text:?} {detail}")))
    }

    fn bytes(&self, bytes: &[u8]) -> String {
        if self.hex {
            encode_hex(bytes)
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        }
    }

    fn written(&self, outcome: &str, index: u64) {
        match self.format {
            OutputFormat::Text => println!("{outcome} at index {index}"),
            OutputFormat::Json => {
                println!(
                    "{}",
                    serde_json::json!({ "outcome": outcome, "index": index })
                );
            }
        }
    }

    fn deleted(&self, existed: bool) {
        match self.format {
            OutputFormat::Text if existed => println!("deleted"),
            OutputFormat::Text => println!("deleted (the key did not exist)"),
            OutputFormat::Json => {
                println!(
                    "{}",
                    serde_json::json!({ "outcome": "deleted", "existed": existed })
                );
            }
        }
    }

    fn value(&self, found: &VersionedValue) {
        let value = self.bytes(&found.value);
        match self.format {
            OutputFormat::Text => println!("{value}"),
            OutputFormat::Json => println!(
                "{}",
                serde_json::json!({ "value": value, "mod_index": found.mod_index.0 })
            ),
        }
    }

    fn page(&self, page: &ScanPage) {
        match self.format {
            OutputFormat::Text => {
                for entry in &page.entries {
                    println!("{} = {}", self.bytes(&entry.key), self.bytes(&entry.value));
                }
                if page.more {
                    println!("(more keys follow; raise --limit to see them)");
                }
            }
            OutputFormat::Json => {
                let entries: Vec<serde_json::Value> = page
                    .entries
                    .iter()
                    .map(|entry| {
                        serde_json::json!({
                            "key": self.bytes(&entry.key),
                            "value": self.bytes(&entry.value),
                            "mod_index": entry.mod_index.0,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "entries": entries, "more": page.more })
                );
            }
        }
    }

    /// Prints one outcome per group and fails with the first group's error, if any.
    fn group_outcomes(
        &self,
        results: &[(u32, Result<String, ClientError>)],
    ) -> Result<(), Failure> {
        match self.format {
            OutputFormat::Text => {
                for (group, result) in results {
                    match result {
                        Ok(outcome) => println!("group {group}: {outcome}"),
                        Err(error) => println!("group {group}: error: {error}"),
                    }
                }
            }
            OutputFormat::Json => {
                let groups: Vec<serde_json::Value> = results
                    .iter()
                    .map(|(group, result)| match result {
                        Ok(outcome) => serde_json::json!({ "group": group, "outcome": outcome }),
                        Err(error) => {
                            serde_json::json!({ "group": group, "error": error.to_string() })
                        }
                    })
                    .collect();
                println!("{}", serde_json::json!({ "groups": groups }));
            }
        }
        match results.iter().find_map(|(_, result)| result.as_ref().err()) {
            Some(error) => Err(Failure::Client(error.clone())),
            None => Ok(()),
        }
    }

    fn memberships(&self, reports: &[(u32, Result<MembershipReport, ClientError>)]) {
        let role = |voter: bool, promote: bool| match (voter, promote) {
            (true, _) => "voter",
            (false, true) => "learner (promoted once caught up)",
            (false, false) => "learner",
        };
        match self.format {
            OutputFormat::Text => {
                for (group, report) in reports {
                    let report = match report {
                        Ok(report) => report,
                        Err(error) => {
                            println!("group {group}: error: {error}");
                            continue;
                        }
                    };
                    let leader = report
                        .leader
                        .map_or_else(|| "none".to_string(), |leader| leader.to_string());
                    let pending = report
                        .pending_change
                        .map(|index| format!(" change pending at {index}"))
                        .unwrap_or_default();
                    println!(
                        "group {group}: leader {leader} term {} commit {} last {}{pending}",
                        report.term, report.commit_index, report.last_index
                    );
                    for member in &report.members {
                        let known = |value: Option<u64>| {
                            value.map_or_else(|| "?".to_string(), |value| value.to_string())
                        };
                        println!(
                            "  node {} {} match {} lag {} client {}",
                            member.node_id,
                            role(member.voter, member.promote_when_caught_up),
                            known(member.match_index),
                            known(member.lag_entries),
                            member.client_address.as_deref().unwrap_or("?")
                        );
                    }
                }
            }
            OutputFormat::Json => {
                let groups: Vec<serde_json::Value> = reports
                    .iter()
                    .map(|(group, report)| match report {
                        Ok(report) => serde_json::json!({
                            "group": group,
                            "leader": report.leader,
                            "term": report.term,
                            "commit_index": report.commit_index,
                            "last_index": report.last_index,
                            "pending_change": report.pending_change,
                            "members": report.members.iter().map(|member| serde_json::json!({
                                "node_id": member.node_id,
                                "role": if member.voter { "voter" } else { "learner" },
                                "promote_when_caught_up": member.promote_when_caught_up,
                                "match_index": member.match_index,
                                "lag_entries": member.lag_entries,
                                "client_address": member.client_address,
                            })).collect::<Vec<_>>(),
                        }),
                        Err(error) => serde_json::json!({
                            "group": group,
                            "error": error.to_string(),
                        }),
                    })
                    .collect();
                println!("{}", serde_json::json!({ "groups": groups }));
            }
        }
    }

    fn status(&self, reports: &[(&str, Result<StatusReport, ClientError>)]) {
        match self.format {
            OutputFormat::Text => {
                for (endpoint, report) in reports {
                    match report {
                        Ok(report) => {
                            println!("node {} at {endpoint}", report.node_id);
                            for group in &report.groups {
                                let leader = group.leader.map_or_else(
                                    || "none".to_string(),
                                    |leader| leader.to_string(),
                                );
                                println!(
                                    "  group {}: {} term {} leader {leader} commit {} applied {} last {}",
                                    group.group,
                                    group.role.name(),
                                    group.term,
                                    group.commit_index,
                                    group.applied_index,
                                    group.last_index
                                );
                            }
                        }
                        Err(error) => println!("{endpoint}: {error}"),
                    }
                }
            }
            OutputFormat::Json => {
                let nodes: Vec<serde_json::Value> = reports
                    .iter()
                    .map(|(endpoint, report)| match report {
                        Ok(report) => serde_json::json!({
                            "endpoint": endpoint,
                            "node_id": report.node_id,
                            "groups": report.groups.iter().map(|group| serde_json::json!({
                                "group": group.group,
                                "role": group.role.name(),
                                "term": group.term,
                                "leader": group.leader,
                                "commit_index": group.commit_index,
                                "applied_index": group.applied_index,
                                "last_index": group.last_index,
                            })).collect::<Vec<_>>(),
                        }),
                        Err(error) => serde_json::json!({
                            "endpoint": endpoint,
                            "error": error.to_string(),
                        }),
                    })
                    .collect();
                println!("{}", serde_json::json!({ "nodes": nodes }));
            }
        }
    }
}

/// Encodes bytes as lowercase hexadecimal.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Decodes hexadecimal text (either case, even length).
///
/// # Errors
/// A message naming the problem: an odd length or a character that is not a hex digit.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 == 1 {
        return Err(format!(
            "is not hexadecimal: it has {} digits, an odd number",
            text.len()
        ));
    }
    let digits = text.as_bytes();
    let mut bytes = Vec::with_capacity(digits.len() / 2);
    for pair in digits.chunks(2) {
        let high = hex_digit(pair[0])?;
        let low = hex_digit(pair[1])?;
        bytes.push(high << 4 | low);
    }
    Ok(bytes)
}

fn hex_digit(digit: u8) -> Result<u8, String> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(format!(
            "is not hexadecimal: {:?} is not a hex digit",
            char::from(digit)
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0xff];
        assert_eq!(decode_hex(&encode_hex(&bytes)), Ok(bytes.to_vec()));
    }

    #[test]
    fn hex_rejects_odd_length() {
        assert!(decode_hex("abc").is_err());
    }

    #[test]
    fn hex_rejects_non_digits() {
        assert!(decode_hex("zz").is_err());
    }

    #[test]
    fn endpoints_default_to_example_cluster() {
        let cli = ClientCli::parse_from(["shardraft", "status"]);
        assert_eq!(cli.options.endpoints, DEFAULT_CLIENT_ADDRESSES.to_vec());
    }

    #[test]
    fn cas_absent_takes_one_value() {
        let cli = ClientCli::parse_from(["shardraft", "cas", "--absent", "k", "v"]);
        let expected = ClientCommand::Cas {
            key: "k".into(),
            expected: "v".into(),
            new: None,
            absent: true,
            value_file: None,
        };
        assert_eq!(cli.command, expected);
    }

    #[test]
    fn member_add_defaults_to_every_group_and_promotion() {
        let cli = ClientCli::parse_from([
            "shardraft",
            "member",
            "add",
            "--id",
            "4",
            "--peer",
            "127.0.0.1:7040",
            "--client",
            "127.0.0.1:7104",
        ]);
        let expected = ClientCommand::Member(MemberCommand::Add {
            id: 4,
            peer: "127.0.0.1:7040".into(),
            client: "127.0.0.1:7104".into(),
            http: None,
            learner: false,
            group: None,
        });
        assert_eq!(cli.command, expected);
    }

    #[test]
    fn leader_transfer_needs_a_target() {
        let parsed = ClientCli::try_parse_from(["shardraft", "leader", "transfer", "--group", "1"]);
        assert!(parsed.is_err());
    }

    #[test]
    fn global_options_follow_the_command() {
        let cli = ClientCli::parse_from([
            "shardraft",
            "get",
            "k",
            "--stale",
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "--output",
            "json",
        ]);
        assert_eq!(cli.options.endpoints.len(), 2);
        assert_eq!(cli.options.output, OutputFormat::Json);
    }
}
