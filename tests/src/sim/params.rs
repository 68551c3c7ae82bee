//! The shape of one run, drawn from its seed: cluster size, core settings, disk latency,
//! client count, snapshot intervals and the phases of the run.

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use super::network::{chance, uniform};

/// Cluster sizes the simulator covers; a seed picks one unless the caller fixes it.
pub const CLUSTER_SIZES: [usize; 4] = [1, 3, 5, 7];

/// Virtual length of one tick of the core.
pub const TICK_US: u64 = 10_000;

#[derive(Clone, Debug, PartialEq)]
pub struct RunParams {
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub max_entries_per_message: usize,
    pub max_inflight_messages: usize,
    pub max_bytes_per_message: u64,
    /// Range of one storage write plus sync.
    pub disk_latency_us_min: u64,
    pub disk_latency_us_max: u64,
    /// Storage reports durability after this many finished batches, or when no write is
    /// left in flight.
    pub batches_per_durability_report: u64,
    /// Probability that one write stalls for `disk_stall_us`.
    pub disk_stall_probability: f64,
    pub disk_stall_us: u64,
    /// Faults happen between `faults_start_us` and `faults_end_us`; then every node is up
    /// and every link healthy, except a leader held down by `leader_down_after_faults`.
    pub faults_start_us: u64,
    pub faults_end_us: u64,
    /// Once faults stop, a leader must commit an entry appended after that within this
    /// bound, and a client operation invoked after that must succeed.
    pub liveness_bound_us: u64,
    /// Clients stop issuing operations here; the run ends at `end_us`.
    pub clients_stop_us: u64,
    pub end_us: u64,
    /// A client gives up on an operation after this long and records its outcome as
    /// unknown.
    pub client_timeout_us: u64,
    /// Each replica takes a snapshot once it applied this many entries since its last one;
    /// `None` never compacts.
    pub snapshot_every_entries: Option<u64>,
    /// Entries kept in the log before a snapshot's index when compacting.
    pub snapshot_keep_entries: u64,
    /// Whether each replica runs the engine's accrual failure detector over its leader's
    /// heartbeats and brings its election forward when the detector suspects the leader.
    pub failure_detector: bool,
    /// The core's `read_batch_max`: 1 to 8 reads start a round while another is in flight.
    pub read_batch_max: usize,
    /// Whether each replica runs the engine's adaptive tuner, and a leader proposes the
    /// group timing its tuner chooses. Only in runs with pre-vote and check-quorum.
    pub tuner: bool,
    /// Whether the node leading when faults stop crashes then and stays down until another
    /// leader commits an entry of its own term. This happens only where the other voters
    /// that may vote are still a quorum, and they must elect a leader without it.
    pub leader_down_after_faults: bool,
}

/// The phi at which a replica's failure detector suspects its leader, the engine's
/// default `tuning.phi_threshold`.
pub const PHI_THRESHOLD: f64 = 8.0;

impl RunParams {
    /// Draws the parameters of a run. `nodes` fixes the cluster size; otherwise the seed
    /// cycles through [`CLUSTER_SIZES`] so that any range of seeds covers every size.
    pub fn draw(seed: u64, rng: &mut ChaCha8Rng, nodes: Option<usize>) -> RunParams {
        let nodes = nodes.unwrap_or(CLUSTER_SIZES[(seed % CLUSTER_SIZES.len() as u64) as usize]);
        let faults_start_us = 500_000;
        let faults_end_us = faults_start_us + uniform(rng, 2_000_000, 8_000_000);
        // Elections take a few hundred milliseconds of virtual time; the bound leaves room
        // for several failed rounds, and the run lasts past it so that the bound can fire.
        let liveness_bound_us = 3_000_000;
        let clients_stop_us = faults_end_us + liveness_bound_us + 500_000;
        let clients = uniform(rng, 2, 5) as usize;
        let keys = uniform(rng, 1, 3) as usize;
        // Most runs use the production settings; some turn the protections off so that
        // the paths without them stay exercised.
        let pre_vote = !chance(rng, 0.15);
        let check_quorum = !chance(rng, 0.15);
        RunParams {
            nodes,
            clients,
            keys,
            pre_vote,
            check_quorum,
            max_entries_per_message: uniform(rng, 1, 64) as usize,
            max_inflight_messages: uniform(rng, 1, 8) as usize,
            max_bytes_per_message: uniform(rng, 64, 4096),
            disk_latency_us_min: uniform(rng, 20, 200),
            disk_latency_us_max: uniform(rng, 300, 3_000),
            batches_per_durability_report: uniform(rng, 1, 3),
            disk_stall_probability: uniform(rng, 0, 3) as f64 / 100.0,
            disk_stall_us: uniform(rng, 10_000, 200_000),
            faults_start_us,
            faults_end_us,
            liveness_bound_us,
            clients_stop_us,
            end_us: clients_stop_us + 1_000_000,
            client_timeout_us: 1_000_000,
            // Short intervals make followers that were down or cut off catch up by snapshot.
            snapshot_every_entries: (!chance(rng, 0.2)).then(|| uniform(rng, 5, 60)),
            snapshot_keep_entries: uniform(rng, 0, 8),
            // Taken from the seed rather than the generator, so that adding it left every
            // other parameter and fault of a seed as it was.
            failure_detector: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 1,
            // Also from the seed, for the same reason.
            read_batch_max: (seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 61) as usize + 1,
            // Also from the seed, for the same reason. The engine runs its tuner only with
            // pre-vote and check-quorum, which it always turns on. Without them a node
            // removed while cut off keeps deposing leaders, and a group then depends on its
            // timing to commit between two depositions.
            tuner: pre_vote && check_quorum && seed.wrapping_mul(0x94d0_49bb_1331_11eb) >> 63 == 1,
            // Also from the seed, for the same reason, in a quarter of the runs.
            leader_down_after_faults: seed.wrapping_mul(0xd6e8_feb8_6659_fd93) >> 62 == 0,
        }
    }

    /// The random seed each replica's core gets, different for every restart.
    pub fn core_seed(seed: u64, node: usize, incarnation: u64) -> u64 {
        let mut rng_seed = seed ^ 0x5eed_5eed_5eed_5eed;
        rng_seed = rng_seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(node as u64);
        rng_seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(incarnation)
    }
}

/// A per-node clock skew, so that replicas' ticks drift apart as real clocks do.
pub fn tick_period_us(rng: &mut ChaCha8Rng) -> u64 {
    TICK_US - TICK_US / 50 + rng.next_u64() % (TICK_US / 25 + 1)
}
