//! Bytes that are not valid peer frames, sent to a node's peer port while the cluster
//! serves: each must close its own connection, count as rejected and leave the cluster
//! working. Also a peer port that accepts connections but never responds to the hello.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use shardraft::kv::Command;
use shardraft::log::GroupId;
use shardraft::raft::{LogIndex, Membership, Message, MessageBody, NodeId, SnapshotMeta, Term};
use shardraft::transport::frame::{
    FRAME_HEADER_BYTES, FrameDecoder, FrameKind, PROTOCOL_VERSION, encode_frame,
};
use shardraft::transport::wire::{self, GroupMessage, WireHello};
use support::*;

fn hello_frame(cluster_id: u64, node_id: u64) -> Vec<u8> {
    let hello = WireHello {
        cluster_id,
        node_id,
        shard: 0,
        shard_count: 1,
    };
    let mut frame = Vec::new();
    encode_frame(
        FrameKind::Hello,
        &wire::encode_hello(&hello).unwrap(),
        &mut frame,
    );
    frame
}

fn messages_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(FrameKind::Messages, payload, &mut frame);
    frame
}

/// Sends `bytes` and returns whether the node closed the connection within a second.
fn node_closes_after(address: std::net::SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(address).expect("connecting to the peer port");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    stream.write_all(bytes).expect("sending bytes");
    let mut buffer = [0u8; 64];
    // A closed connection reads as end of stream (or a reset); a timeout means it is open.
    // The node responds to a valid hello before the bad bytes after it close the connection.
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => {
                return error.kind() != std::io::ErrorKind::WouldBlock
                    && error.kind() != std::io::ErrorKind::TimedOut;
            }
        }
    }
}

fn rejected_connections(handle: &KvHandle) -> u64 {
    let status = handle.status().expect("reading status");
    status
        .shards
        .iter()
        .map(|shard| shard.transport.connections_rejected)
        .sum()
}

#[test]
fn invalid_frames_close_their_connection_and_cluster_keeps_serving() {
    let dir = test_dir("invalid_frames_close_their_connection");
    let configs = cluster_configs(&dir, 3, 1, 1);
    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
    let group = GroupId(0);
    let leader = wait_for_leader(
        &handles.iter().collect::<Vec<_>>(),
        group,
        Duration::from_secs(10),
    );
    let target = &handles[leader.0 as usize - 1];
    let address = configs[leader.0 as usize - 1].members[leader.0 as usize - 1]
        .shard_address(0)
        .unwrap();
    let cluster_id = configs[0].cluster_id;
    let peer = if leader.0 == 1 { 2 } else { 1 };

    let mut wrong_version = hello_frame(cluster_id, peer);
    wrong_version[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    let mut oversized = hello_frame(cluster_id, peer);
    oversized[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut bad_checksum = hello_frame(cluster_id, peer);
    let last = bad_checksum.len() - 1;
    bad_checksum[last] ^= 0x40;
    let mut garbage_after_hello = hello_frame(cluster_id, peer);
    garbage_after_hello.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut invalid_archive = hello_frame(cluster_id, peer);
    invalid_archive.extend(messages_frame(&[0xee; 48]));
    // A well-formed InstallSnapshot outside a snapshot transfer, from a newer term and past
    // the commit index: the core would accept it and ask to install a snapshot that this
    // node never received.
    let snapshot_message = GroupMessage {
        group,
        message: Message {
            from: NodeId(peer),
            to: leader,
            term: Term(1_000),
            body: MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta {
                    index: LogIndex(1_000_000),
                    term: Term(999),
                    membership: Membership::with_voters((1..=3).map(NodeId)),
                },
            },
        },
    };
    let mut snapshot_in_messages = hello_frame(cluster_id, peer);
    snapshot_in_messages.extend(messages_frame(
        &wire::encode_batch(&[snapshot_message]).unwrap(),
    ));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a shardraft frame at all".to_vec()),
        ("wrong version", wrong_version),
        ("oversized", oversized),
        ("bad checksum", bad_checksum),
        (
            "hello from another cluster",
            hello_frame(cluster_id + 1, peer),
        ),
        ("hello from a non-member", hello_frame(cluster_id, 99)),
        ("garbage after hello", garbage_after_hello),
        ("invalid archive", invalid_archive),
        ("snapshot in a messages frame", snapshot_in_messages),
        ("messages before hello", messages_frame(&[0u8; 16])),
    ];

    for (index, (name, bytes)) in cases.iter().enumerate() {
        assert!(
            node_closes_after(address, bytes),
            "the node kept a connection that sent {name}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while rejected_connections(target) < index as u64 + 1 {
            assert!(
                Instant::now() < deadline,
                "{name} was not counted as rejected"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let command = Command::Put {
            key: format!("after-{index}").into_bytes(),
            value: b"ok".to_vec(),
        }
        .encode()
        .unwrap();
        target
            .propose(group, command)
            .unwrap_or_else(|error| panic!("the cluster stopped serving after {name}: {error}"));
    }

    // A truncated frame followed by a close must not disturb anything either.
    let mut truncated = hello_frame(cluster_id, peer);
    truncated.truncate(FRAME_HEADER_BYTES + 3);
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(&truncated).unwrap();
    drop(stream);
    let command = Command::Delete {
        key: b"after-0".to_vec(),
    }
    .encode()
    .unwrap();
    target
        .propose(group, command)
        .expect("serving after a truncated frame");
    for node in nodes {
        node.shutdown().expect("shutting down");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes split at random points never panic the decoder, and whatever frames
    /// it accepts also go through archive validation without panicking.
    #[test]
    fn frame_decoder_survives_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        split in 0usize..4096,
    ) {
        let mut decoder = FrameDecoder::new(1 << 16);
        let split = split.min(bytes.len());
        for mut piece in [&bytes[..split], &bytes[split..]] {
            while let Ok(Some(frame)) = decoder.decode(&mut piece) {
                let _ = wire::decode_batch(&frame.payload);
                let _ = wire::decode_hello(&frame.payload);
            }
        }
    }

    /// Valid frames with random payloads decode back to exactly those payloads.
    #[test]
    fn random_payloads_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let frame = messages_frame(&payload);
        let mut decoder = FrameDecoder::new(1 << 16);
        let mut input = &frame[..];
        let decoded = decoder.decode(&mut input).unwrap().unwrap();
        prop_assert_eq!(&decoded.payload[..], &payload[..]);
        let _ = wire::decode_batch(&decoded.payload);
    }
}

#[test]
fn unanswered_hello_keeps_the_link_down() {
    // Node 2's port accepts connections and never responds, like a listener that a stopping
    // shard left to io_uring. Node 1 must not count such a connection as up: it gives up
    // after its hello timeout and connects again.
    let dir = test_dir("unanswered_hello_keeps_the_link_down");
    let mut configs = cluster_configs(&dir, 3, 1, 1);
    configs[0].transport.hello_timeout_ms = 200;
    let silent_address = configs[0].members[1].addresses[0];
    let silent = std::net::TcpListener::bind(silent_address).expect("binding node 2's port");
    silent.set_nonblocking(true).unwrap();
    let node = start_node(&configs[0]);
    let handle = node.handle();

    let mut accepted_streams = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        match silent.accept() {
            Ok((stream, _)) => accepted_streams.push(stream),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("accepting on node 2's port failed: {error}"),
        }
    }
    let status = handle.status().expect("reading status");
    let connects: u64 = status
        .shards
        .iter()
        .map(|shard| shard.transport.connects)
        .sum();
    assert!(
        accepted_streams.len() >= 2,
        "node 1 connected {} times in 1.5 s; it should retry after each 200 ms hello timeout",
        accepted_streams.len()
    );
    assert_eq!(connects, 0, "node 1 counted an unanswered connection as up");
    node.shutdown().expect("shutting down");
}
