//! The bench harness: one workload, driven against any system that implements [`Target`],
//! with results that can be stored, merged and compared.
//!
//! Data flow of a run: the command line becomes a workload description; the target opens
//! its sessions (connections); client tasks on glommio executors issue requests, closed
//! loop (each client waits for its reply) or open loop (requests start at fixed intended
//! times, and latency counts from the intended start); every completion lands in
//! per-operation HdrHistograms and, with `--check`, in a history for the linearizability
//! checker. The summary, the JSON result, sweep CSV and charts are all made from the
//! result alone.

pub mod result;
pub mod target;
