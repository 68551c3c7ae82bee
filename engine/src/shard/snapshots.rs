//! Snapshots in the shard's loop: when a group takes one, compacting after it, sending it
//! to followers, installing one from a leader, and restoring from one at startup.
//!
//! Taking a snapshot never pauses writes. Once a group applied
//! `snapshot.trigger_entries` entries or `snapshot.trigger_log_bytes` payload bytes since
//! its last snapshot, the loop takes a view of its state machine between two applies
//! (`StateMachine::snapshot_view`, constant time for the key-value store) and spawns a task
//! on the same executor that serializes the view in steps, yielding between them, and
//! stores the file durably. When the task reports back, the loop calls
//! `RaftNode::compact` keeping `snapshot.log_tail_entries` entries below the snapshot, and
//! adds `WriteBatch::compact` for the same index to the next batch, so that the log
//! deletes segments that every group has compacted. Once the disk log has more than
//! `snapshot.log_segments_max` segments, the groups whose entries keep its oldest segment
//! compact past it whatever their triggers (see [`Shard::release_oldest_segment`]). So an
//! idle group cannot keep every segment on disk. A group takes one snapshot at a time.
//! While a transfer of its snapshot is in flight or recently failed, it defers the next
//! one up to four times the trigger, because a transfer resumes only at the same snapshot
//! and would otherwise start over with every new one.
//!
//! Installing: an `InstallSnapshot` for a follower leaves `Ready.messages` here and goes
//! to the transport as a snapshot transfer. The receiving shard steps the message into its
//! core only after the transport verified and stored the snapshot; the core then returns
//! `Ready.snapshot_to_install`, and the loop replaces the group's state machine with the
//! one the transport restored from the received bytes (see [`restoring_check`]) and adds
//! `compact` (log kept) or `install_snapshot` (log dropped) to the batch, before the
//! Ready's entries.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardraft_raft::{
    LogIndex, Message, MessageBody, NodeId, RestoredState, SnapshotInstall, SnapshotTransfer,
};

use super::queue::EventQueue;
use super::replica::Replica;
use super::{Shard, ShardEvent};
use crate::config::SnapshotConfig;
use crate::log::{GroupId, Log, LogStore, WriteBatch};
use crate::node::NodeError;
use crate::snapshot::{
    self, SnapshotActivity, SnapshotError, SnapshotFile, SnapshotStats, SnapshotStore,
    StoredSnapshot,
};
use crate::state_machine::{Snapshot, SnapshotView, StateMachine};
use crate::transport::{ReceivedSnapshot, SnapshotCheck, SnapshotSent, Transport};

/// A received snapshot waiting for the core to install it: the file, and the state
/// machine restored from it before it was stored.
#[derive(Debug)]
struct ReceivedInstall {
    file: SnapshotFile,
    restored: Box<dyn Any>,
}

/// Returns the transport's test of received snapshots: it restores each into a new state
/// machine from `new_state_machine`, so that data the state machine rejects is discarded
/// with the transfer instead of stopping the shard at the install.
pub(super) fn restoring_check<S: StateMachine + 'static>(
    new_state_machine: Arc<dyn Fn(GroupId) -> S + Send + Sync>,
) -> SnapshotCheck {
    SnapshotCheck(Rc::new(move |group, file: &SnapshotFile| {
        let mut state_machine = new_state_machine(group);
        let snapshot = Snapshot {
            index: file.meta.index,
            term: file.meta.term,
            data: file.data.clone(),
        };
        state_machine
            .restore(&snapshot)
            .map_err(|error| error.to_string())?;
        Ok(Box::new(state_machine) as Box<dyn Any>)
    }))
}

/// A snapshot task's report to the loop.
#[derive(Debug)]
pub(crate) enum SnapshotEvent {
    /// A snapshot the shard took is stored durably, or taking it failed.
    Stored {
        group: GroupId,
        result: Result<(StoredSnapshot, Duration), SnapshotError>,
    },
}

/// The shard's snapshot state.
#[derive(Debug)]
pub(super) struct ShardSnapshots {
    pub store: Rc<SnapshotStore>,
    pub stats: SnapshotStats,
    /// Log compactions for the next batch.
    compactions: Vec<(GroupId, LogIndex)>,
    /// Received snapshots whose `InstallSnapshot` the core accepted, until its `Ready`
    /// installs them.
    received: BTreeMap<GroupId, ReceivedInstall>,
    /// Transfers in flight, by group and follower.
    sending: BTreeSet<(GroupId, NodeId)>,
    /// Groups whose snapshot is being serialized or stored.
    building: BTreeSet<GroupId>,
    /// Groups that must compact through at least this index once their snapshot in
    /// progress is stored, because they keep the log's oldest segment.
    releasing: BTreeMap<GroupId, LogIndex>,
    /// When a transfer of each group's snapshot last failed; the leader retries it soon and
    /// resumes only if the snapshot is still the same.
    failed_at: BTreeMap<GroupId, Instant>,
    /// The node-wide counts of snapshots begun and ended.
    activity: Arc<SnapshotActivity>,
    /// The task queue that snapshots are built and stored in. It has fewer shares than the
    /// shard's loop, so a large state is serialized mostly while the loop is idle.
    background: glommio::TaskQueueHandle,
}

/// Shares of the snapshot task queue against the default queue's 1000: under full load the
/// snapshot gets about a sixth of the executor, so that it still completes while writes go
/// on.
const BACKGROUND_SHARES: usize = 200;

impl ShardSnapshots {
    pub fn new(store: Rc<SnapshotStore>, activity: Arc<SnapshotActivity>) -> ShardSnapshots {
        ShardSnapshots {
            store,
            stats: SnapshotStats::default(),
            compactions: Vec::new(),
            received: BTreeMap::new(),
            sending: BTreeSet::new(),
            building: BTreeSet::new(),
            releasing: BTreeMap::new(),
            failed_at: BTreeMap::new(),
            activity,
            background: glommio::executor().create_task_queue(
                glommio::Shares::Static(BACKGROUND_SHARES),
                glommio::Latency::NotImportant,
                "snapshots",
            ),
        }
    }

    /// Adds the log compactions that snapshots made possible to `batch`.
    pub fn add_compactions(&mut self, batch: &mut WriteBatch) {
        for (group, through) in self.compactions.drain(..) {
            batch.compact(group, through);
        }
    }

    /// Whether a transfer of the group's snapshot is in flight or failed within `hold`, so
    /// that a new snapshot would make its next attempt start over.
    fn transfer_pending(&self, group: GroupId, hold: Duration) -> bool {
        self.sending_group(group)
            || self
                .failed_at
                .get(&group)
                .is_some_and(|failed_at| failed_at.elapsed() < hold)
    }

    fn sending_group(&self, group: GroupId) -> bool {
        self.sending
            .range((group, NodeId(0))..)
            .next()
            .is_some_and(|(sending, _)| *sending == group)
    }
}

impl Drop for ShardSnapshots {
    /// Ends the snapshots still being built, whose tasks stop with the shard, so that the
    /// node's activity counts do not show them in progress forever.
    fn drop(&mut self) {
        for _ in &self.building {
            self.activity.end();
        }
    }
}

/// Starts a background snapshot of `group` at what `replica` applied, unless that is no
/// newer than its latest snapshot. Returns whether it started.
fn start_snapshot<S>(
    snapshots: &mut ShardSnapshots,
    events: &EventQueue<ShardEvent<S>>,
    group: GroupId,
    replica: &mut Replica<S>,
) -> bool
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    let view = replica.state_machine.snapshot_view();
    let Some(meta) = replica.core.snapshot_meta(view.index()) else {
        return false;
    };
    let newer = replica
        .core
        .latest_snapshot()
        .is_none_or(|latest| meta.index > latest.index);
    if !newer || meta.index.0 == 0 {
        return false;
    }
    replica.applied_since_snapshot = Default::default();
    snapshots.building.insert(group);
    snapshots.activity.begin();
    let store = Rc::clone(&snapshots.store);
    let events = events.clone();
    let task = async move {
        let started = Instant::now();
        let file = snapshot::build_file(group, &meta, view).await;
        let result = store
            .save(group, &meta, file)
            .await
            .map(|stored| (stored, started.elapsed()));
        events.push_now(ShardEvent::Snapshot(SnapshotEvent::Stored {
            group,
            result,
        }));
    };
    match glommio::spawn_local_into(task, snapshots.background) {
        Ok(task) => {
            task.detach();
            true
        }
        Err(error) => {
            // The queue belongs to this executor, so this is not expected. The group's next
            // trigger tries again.
            snapshots.building.remove(&group);
            snapshots.activity.end();
            snapshots.stats.failed += 1;
            tracing::error!(%error, "starting a snapshot task failed");
            false
        }
    }
}

/// Whether `replica` has applied enough since its last snapshot to take the next one. An
/// idle group below both triggers compacts through `Shard::release_oldest_segment` instead.
fn snapshot_due<S: StateMachine>(replica: &Replica<S>, config: &SnapshotConfig) -> bool {
    snapshot_due_times(replica, config, 1)
}

/// Whether `replica` has applied `times` the triggers since its last snapshot.
fn snapshot_due_times<S: StateMachine>(
    replica: &Replica<S>,
    config: &SnapshotConfig,
    times: u64,
) -> bool {
    let entries = config.trigger_entries.saturating_mul(times);
    let bytes = config.trigger_log_bytes.saturating_mul(times);
    (entries > 0 && replica.applied_since_snapshot.entries >= entries)
        || (bytes > 0 && replica.applied_since_snapshot.bytes >= bytes)
}

/// How many times the triggers a group defers its next snapshot past while a transfer of
/// its snapshot is pending, which bounds its log meanwhile.
const DEFERRED_SNAPSHOT_TRIGGERS_MAX: u64 = 4;

/// Takes `InstallSnapshot` messages out of `messages` and starts a transfer of the group's
/// stored snapshot for each, unless one to that follower is in flight.
pub(super) fn route_install_snapshots<S: StateMachine, E>(
    group: GroupId,
    replica: &mut Replica<S>,
    messages: &mut Vec<Message>,
    snapshots: &mut ShardSnapshots,
    transport: &Transport<E>,
    log_tail_entries: u64,
) where
    E: From<crate::transport::TransportEvent> + 'static,
{
    if !messages
        .iter()
        .any(|message| matches!(message.body, MessageBody::InstallSnapshot { .. }))
    {
        return;
    }
    let mut kept = Vec::with_capacity(messages.len());
    for message in messages.drain(..) {
        let MessageBody::InstallSnapshot { snapshot: meta } = &message.body else {
            kept.push(message);
            continue;
        };
        let peer = message.to;
        if snapshots.sending.contains(&(group, peer)) {
            continue;
        }
        match snapshots.store.newest(group) {
            Some(stored) if stored.meta == *meta => {
                snapshots.sending.insert((group, peer));
                transport.send_snapshot(group, message, stored);
            }
            stored => {
                if let Some(stored) = &stored {
                    adopt_received_snapshot(group, replica, stored, snapshots, log_tail_entries);
                }
                // The stored snapshot is newer than the core's latest (its compaction is on
                // its way, or the core adopted it just now) or missing; the core asks again
                // after a heartbeat round trip.
                tracing::debug!(
                    %group, %peer, wanted = meta.index.0,
                    stored = ?stored.map(|stored| stored.meta.index.0),
                    "the stored snapshot is not the one the core sends; retrying later"
                );
                replica.core.report_snapshot(peer, SnapshotTransfer::Failed);
            }
        }
    }
    *messages = kept;
}

/// Makes the core take `stored`, the group's newest stored snapshot, as its own when the
/// core's latest snapshot is older and the replica applied past `stored`.
///
/// Such a snapshot came from a leader while this replica already held every entry it
/// covers, so its core answered without installing it, but the transport had stored it and
/// dropped the older file. Without this, the core of this replica as a leader would keep
/// naming its older snapshot, which is no longer stored, and no follower that needs one
/// could catch up until the next snapshot of its own.
fn adopt_received_snapshot<S: StateMachine>(
    group: GroupId,
    replica: &mut Replica<S>,
    stored: &StoredSnapshot,
    snapshots: &mut ShardSnapshots,
    log_tail_entries: u64,
) {
    let core = &mut replica.core;
    let newer = core
        .latest_snapshot()
        .is_none_or(|latest| stored.meta.index > latest.index);
    if !newer || stored.meta.index > core.applied_index() {
        return;
    }
    let through = LogIndex(stored.meta.index.0.saturating_sub(log_tail_entries));
    match core.compact(stored.meta.clone(), through) {
        Ok(()) => {
            if through.0 > 0 {
                snapshots.compactions.push((group, through));
            }
            tracing::info!(%group, index = stored.meta.index.0, "took a snapshot received earlier as this replica's own");
        }
        Err(error) => {
            tracing::warn!(%group, index = stored.meta.index.0, %error, "the core did not take the stored snapshot");
        }
    }
}

/// Restores `replica`'s state machine from the snapshot the core installs, and adds the
/// log's part to `batch`. Runs before the Ready's entries are added.
pub(super) fn install_snapshot<S: StateMachine + 'static>(
    shard: u32,
    group: GroupId,
    replica: &mut Replica<S>,
    install: SnapshotInstall,
    batch: &mut WriteBatch,
    snapshots: &mut ShardSnapshots,
) -> Result<(), NodeError> {
    let meta = &install.snapshot;
    let failure = |detail: String| NodeError::Startup {
        shard,
        detail: format!(
            "installing the snapshot of group {group} at index {}: {detail}",
            meta.index
        ),
    };
    let ReceivedInstall { file, restored } = snapshots
        .received
        .remove(&group)
        .filter(|received| received.file.meta == *meta)
        .ok_or_else(|| {
            failure("the core installs a snapshot this shard did not receive".to_string())
        })?;
    let started = Instant::now();
    let restored = restored.downcast::<S>().map_err(|_| {
        failure("the transport restored it into a state machine of another type".to_string())
    })?;
    // The restored state machine covers exactly `meta`, so it replaces the group's whole.
    replica.state_machine = *restored;
    if install.log_kept {
        batch.compact(group, meta.index);
    } else {
        batch.install_snapshot(group, meta.index, meta.term);
    }
    replica.applied_since_snapshot = Default::default();
    let stats = &mut snapshots.stats;
    stats.installed += 1;
    stats.installed_bytes += file.data.len() as u64;
    stats.install_time += started.elapsed();
    tracing::info!(%group, index = meta.index.0, term = meta.term.0, log_kept = install.log_kept, bytes = file.data.len(), "snapshot installed");
    Ok(())
}

impl<S> Shard<S>
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    /// Starts a background snapshot of every group that is due for one.
    pub(super) fn start_due_snapshots(&mut self) {
        let config = &self.config.snapshot;
        // Long enough for the core to retry a failed transfer, which it does after the next
        // heartbeat round trip.
        let hold = Duration::from_millis(config.transfer_progress_timeout_ms.saturating_mul(2));
        for (group, replica) in self.replicas.iter_mut() {
            if !snapshot_due(replica, config) || self.snapshots.building.contains(group) {
                continue;
            }
            let overdue = snapshot_due_times(replica, config, DEFERRED_SNAPSHOT_TRIGGERS_MAX);
            if self.snapshots.transfer_pending(*group, hold) && !overdue {
                continue;
            }
            start_snapshot(&mut self.snapshots, &self.events, *group, replica);
        }
    }

    /// Makes the groups that keep the disk log's oldest segment compact past it once the
    /// log has more than `snapshot.log_segments_max` segments. A group whose latest
    /// snapshot already covers its entries there compacts at once; one whose applied
    /// entries cover them takes a snapshot first. Both ignore the triggers and the tail,
    /// since a group that stays below its triggers would otherwise hold the segment, and
    /// every segment after it, for as long as it stays idle.
    pub(super) fn release_oldest_segment(&mut self) {
        let segments_max = self.config.snapshot.log_segments_max;
        let Log::Disk(log) = &self.log else {
            return;
        };
        if segments_max == 0 {
            return;
        }
        let oldest = log.oldest_segment_holders();
        if (oldest.live_segments as u64) <= segments_max {
            return;
        }
        let compactions_before = self.snapshots.compactions.len();
        for (group, index) in oldest.holders {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue;
            };
            if self.snapshots.building.contains(&group) {
                let releasing = self.snapshots.releasing.entry(group).or_default();
                *releasing = (*releasing).max(index);
                continue;
            }
            let span = replica.span.clone();
            let _entered = span.enter();
            let covered = replica
                .core
                .latest_snapshot()
                .filter(|latest| latest.index >= index)
                .cloned();
            if let Some(latest) = covered {
                if let Err(error) = replica.core.compact(latest, index) {
                    tracing::warn!(
                        %error,
                        through = index.0,
                        "compacting past the oldest log segment failed"
                    );
                    continue;
                }
                tracing::info!(
                    through = index.0,
                    live_segments = oldest.live_segments,
                    "compacting past the oldest log segment"
                );
                self.snapshots.compactions.push((group, index));
            } else if replica.state_machine.applied_index() >= index {
                tracing::info!(
                    through = index.0,
                    live_segments = oldest.live_segments,
                    "taking a snapshot to compact past the oldest log segment"
                );
                if start_snapshot(&mut self.snapshots, &self.events, group, replica) {
                    self.snapshots.releasing.insert(group, index);
                }
            }
            // Otherwise its entries there are not applied yet; a later check tries again.
        }
        // The next turn of the loop writes the compactions with its write batch.
        if self.snapshots.compactions.len() > compactions_before {
            self.events.push_now(ShardEvent::Continue);
        }
    }

    pub(super) fn on_snapshot_event(&mut self, event: SnapshotEvent) {
        match event {
            SnapshotEvent::Stored { group, result } => self.on_snapshot_stored(group, result),
        }
    }

    fn on_snapshot_stored(
        &mut self,
        group: GroupId,
        result: Result<(StoredSnapshot, Duration), SnapshotError>,
    ) {
        if self.snapshots.building.remove(&group) {
            self.snapshots.activity.end();
        }
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        let _entered = replica.span.enter();
        let (stored, took) = match result {
            Ok(stored) => stored,
            Err(error) => {
                // The previous snapshot and the log still cover the state; the next
                // trigger tries again.
                self.snapshots.stats.failed += 1;
                tracing::error!(%error, "storing a snapshot failed");
                return;
            }
        };
        let meta = stored.meta.clone();
        let tail = self.config.snapshot.log_tail_entries;
        // A group that keeps the oldest segment compacts past it, tail or not.
        let releasing = self
            .snapshots
            .releasing
            .remove(&group)
            .map_or(LogIndex(0), |index| index.min(meta.index));
        let through = LogIndex(meta.index.0.saturating_sub(tail)).max(releasing);
        if let Err(error) = replica.core.compact(meta.clone(), through) {
            // A snapshot installed from a leader meanwhile is newer; this one is moot.
            tracing::debug!(%error, "the core did not take the snapshot");
            return;
        }
        if through.0 > 0 {
            self.snapshots.compactions.push((group, through));
        }
        let stats = &mut self.snapshots.stats;
        stats.taken += 1;
        stats.creation.record(took);
        stats.last_file_bytes = stored.file_bytes;
        tracing::info!(
            index = meta.index.0,
            through = through.0,
            file_bytes = stored.file_bytes,
            took_ms = took.as_millis() as u64,
            "snapshot taken"
        );
        self.events.push_now(ShardEvent::Continue);
    }

    /// Steps the `InstallSnapshot` of a snapshot the transport stored, and keeps the
    /// snapshot for the install if the core accepted it.
    pub(super) fn on_snapshot_received(&mut self, received: Box<ReceivedSnapshot>) {
        let ReceivedSnapshot {
            group,
            message,
            file,
            restored,
            duration,
            bytes_received,
            ..
        } = *received;
        self.snapshots.stats.receive.record(duration);
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        let _entered = replica.span.enter();
        tracing::info!(
            index = file.meta.index.0,
            bytes_received,
            "snapshot received"
        );
        let latest_before = replica.core.latest_snapshot().cloned();
        if let Err(rejection) = replica.core.step(message) {
            tracing::debug!(?rejection, "InstallSnapshot rejected by the core");
        }
        // The core installs a snapshot by making it its latest; one that covers only
        // committed entries is answered without installing, so its bytes are not needed.
        // A snapshot received earlier and not installed yet stays unless this one
        // replaced it in the core.
        let latest = replica.core.latest_snapshot();
        if latest == Some(&file.meta) && latest != latest_before.as_ref() {
            self.snapshots
                .received
                .insert(group, ReceivedInstall { file, restored });
        }
    }

    pub(super) fn on_snapshot_sent(
        &mut self,
        group: GroupId,
        peer: NodeId,
        outcome: Result<SnapshotSent, String>,
    ) {
        self.snapshots.sending.remove(&(group, peer));
        match &outcome {
            Ok(_) => {
                self.snapshots.failed_at.remove(&group);
            }
            Err(_) => {
                self.snapshots.failed_at.insert(group, Instant::now());
            }
        }
        if let Some(replica) = self.replicas.get_mut(&group) {
            let _entered = replica.span.enter();
            let outcome = match outcome {
                Ok(_) => SnapshotTransfer::Finished,
                Err(_) => SnapshotTransfer::Failed,
            };
            replica.core.report_snapshot(peer, outcome);
        }
    }
}

/// Builds the durable state of `group` from its newest valid snapshot and the log,
/// restoring `state_machine` from the snapshot. Adds to `repairs` the log record that a
/// crash between storing a received snapshot and logging its install left out.
///
/// # Errors
/// The log is compacted past every valid snapshot (the message names the corrupt files),
/// the state machine rejects the snapshot, or reading fails.
pub(super) async fn restored_state<S: StateMachine>(
    shard: u32,
    log: &Log,
    store: &SnapshotStore,
    group: GroupId,
    state_machine: &mut S,
    repairs: &mut WriteBatch,
) -> Result<RestoredState, NodeError> {
    let startup = |detail: String| NodeError::Startup { shard, detail };
    let log_state = log.group_state(group);
    let compacted = log_state.map_or(LogIndex(0), |state| state.compacted_index);
    let found = store
        .find_newest(group)
        .map_err(|error| startup(error.to_string()))?;
    let Some((file, stored)) = found.newest_valid else {
        if let Some((path, error)) = found.corrupt.into_iter().next() {
            return Err(startup(
                SnapshotError::Corrupt { path, group, error }.to_string(),
            ));
        }
        if compacted.0 > 0 {
            return Err(startup(format!(
                "group {group}'s log is compacted through index {}, but {} holds no snapshot \
                 of it; restore the snapshot directory from a backup, or delete the node's \
                 data directory so that it rejoins empty",
                compacted.0,
                store
                    .dir()
                    .map_or_else(|| "memory".to_string(), |dir| dir.display().to_string()),
            )));
        }
        return restored_from_log(log, group).await;
    };
    if file.meta.index < compacted {
        let detail = match found.corrupt.into_iter().next() {
            Some((path, error)) => SnapshotError::Corrupt { path, group, error }.to_string(),
            None => format!(
                "the newest snapshot of group {group}, {}, ends at index {}, before the log's \
                 compaction at {}; the newer snapshot is missing: restore it from a backup, \
                 or delete the node's data directory so that it rejoins empty",
                stored.describe(),
                file.meta.index.0,
                compacted.0
            ),
        };
        return Err(startup(detail));
    }
    for (path, error) in &found.corrupt {
        tracing::warn!(
            %group, path = %path.display(), %error,
            "ignoring a corrupt snapshot: an older valid one plus the log covers the state"
        );
    }
    store.delete_older(group, file.meta.index);
    let meta = file.meta.clone();
    let snapshot = Snapshot {
        index: meta.index,
        term: meta.term,
        data: file.data.clone(),
    };
    state_machine.restore(&snapshot).map_err(|error| {
        startup(format!(
            "the state machine of group {group} rejected the snapshot {}: {error}; restore \
             the file from a backup, or delete the node's data directory so that it rejoins \
             empty",
            stored.describe()
        ))
    })?;
    let mut hard_state = log_state.map(|state| state.hard_state).unwrap_or_default();
    hard_state.commit = hard_state.commit.max(meta.index);
    if hard_state.term < meta.term {
        // A received snapshot is stored before its message is stepped, so a crash between
        // the two can leave a stored term below the snapshot's. The node never voted in the
        // snapshot's term (a vote is stored with its term), so it takes that term unvoted.
        hard_state.term = meta.term;
        hard_state.vote = None;
        repairs.set_hard_state(group, hard_state);
    }
    // The log's entries above the snapshot continue it only if the log holds the
    // snapshot's last entry with the same term; a follower that crashed after storing a
    // leader's snapshot but before logging its install may hold a diverging suffix.
    let log_continues = match log_state {
        Some(state) if state.last_index >= meta.index => {
            log.term(group, meta.index).ok() == Some(meta.term)
        }
        _ => false,
    };
    let entries = match log_state {
        Some(state) if log_continues && state.last_index > meta.index => {
            log.read(group, meta.index.next()..state.last_index.next(), u64::MAX)
                .await?
        }
        _ => Vec::new(),
    };
    if !log_continues {
        repairs.install_snapshot(group, meta.index, meta.term);
    }
    tracing::info!(
        %group, index = meta.index.0, term = meta.term.0, entries = entries.len(),
        log_continues, "restored from snapshot"
    );
    Ok(RestoredState {
        hard_state,
        snapshot: Some(meta.clone()),
        entries,
        applied: meta.index,
        // Set by the caller from the catching-up marks and `initial_cluster_state`.
        catching_up: false,
        founding: false,
    })
}

async fn restored_from_log(log: &Log, group: GroupId) -> Result<RestoredState, NodeError> {
    let Some(state) = log.group_state(group) else {
        return Ok(RestoredState::default());
    };
    let entries = log
        .read(
            group,
            state.first_index()..state.last_index.next(),
            u64::MAX,
        )
        .await?;
    Ok(RestoredState {
        hard_state: state.hard_state,
        snapshot: None,
        entries,
        applied: LogIndex(0),
        // Set by the caller from the catching-up marks and `initial_cluster_state`.
        catching_up: false,
        founding: false,
    })
}

/// Writes the repairs of [`restored_state`] durably before the cores start.
pub(super) async fn write_repairs(log: &Log, repairs: WriteBatch) -> Result<(), NodeError> {
    if repairs.is_empty() {
        return Ok(());
    }
    let number = log.submit(repairs)?;
    while log
        .wait_durable(crate::log::BatchNumber(number.0 - 1))
        .await?
        < number
    {}
    Ok(())
}
