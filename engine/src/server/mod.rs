//! Servers that run inside a node next to its shards.

pub mod client_service;
pub mod http;
