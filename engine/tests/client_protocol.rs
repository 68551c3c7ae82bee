//! The client protocol's decoders against valid messages and random bytes.

use proptest::prelude::*;
use shardraft::kv::{Condition, ScanRange};
use shardraft::protocol::{
    self, CLIENT_FRAME_BYTES_MAX, CLIENT_FRAME_FORMAT, ClientHello, HelloReply, MemberAddress,
    Operation, ProtocolError, Reply, Request, RequestBatch, Response, ResponseBatch, ServerHello,
};
use shardraft::transport::frame::{
    FrameDecoder, FrameError, FrameKind, PEER_FRAME_FORMAT, encode_frame_with,
};

const LIMIT: u32 = 1 << 20;

fn single_frame(bytes: &[u8]) -> shardraft::transport::frame::Frame {
    let mut frames = protocol::split_frames(bytes, LIMIT).expect("a valid frame");
    assert_eq!(frames.len(), 1);
    frames.remove(0)
}

#[test]
fn requests_round_trip() {
    let batch = RequestBatch {
        requests: vec![
            Request {
                id: 1,
                operation: Operation::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                },
            },
            Request {
                id: u64::MAX,
                operation: Operation::Cas {
                    key: b"k".to_vec(),
                    expected: Condition::ModIndexEquals(7),
                    new_value: None,
                },
            },
            Request {
                id: 3,
                operation: Operation::Scan {
                    group: 2,
                    range: ScanRange::Range {
                        start: b"a".to_vec(),
                        end: Some(b"b".to_vec()),
                    },
                    limit: 10,
                    stale: true,
                },
            },
        ],
    };
    let mut bytes = Vec::new();
    protocol::encode_requests(&batch, &mut bytes).unwrap();

    let decoded = protocol::decode_requests(&single_frame(&bytes)).unwrap();

    assert_eq!(decoded, batch);
}

#[test]
fn hello_reply_with_node_zero_is_invalid() {
    let reply = HelloReply::Accepted(ServerHello {
        protocol_version: protocol::CLIENT_PROTOCOL_VERSION,
        cluster_id: 1,
        node_id: 0,
        groups: 1,
        members: vec![MemberAddress {
            node_id: 1,
            client_address: "127.0.0.1:1".into(),
        }],
    });
    let mut bytes = Vec::new();
    protocol::encode_hello_reply(&reply, &mut bytes).unwrap();

    let error = protocol::decode_hello_reply(&single_frame(&bytes)).unwrap_err();

    assert!(
        matches!(error, ProtocolError::InvalidValue { .. }),
        "{error}"
    );
}

#[test]
fn not_leader_with_node_zero_is_invalid() {
    let batch = ResponseBatch {
        responses: vec![Response {
            id: 9,
            reply: Reply::NotLeader {
                leader: Some(0),
                leader_address: None,
            },
        }],
    };
    let mut bytes = Vec::new();
    protocol::encode_responses(&batch, &mut bytes).unwrap();

    let error = protocol::decode_responses(&single_frame(&bytes)).unwrap_err();

    assert!(
        matches!(error, ProtocolError::InvalidValue { .. }),
        "{error}"
    );
}

#[test]
fn hello_in_a_messages_frame_is_rejected() {
    let hello = ClientHello {
        protocol_version: 1,
        cluster_id: None,
    };
    let mut bytes = Vec::new();
    protocol::encode_client_hello(&hello, &mut bytes).unwrap();

    let error = protocol::decode_requests(&single_frame(&bytes)).unwrap_err();

    assert!(
        matches!(error, ProtocolError::UnexpectedFrame { .. }),
        "{error}"
    );
}

#[test]
fn peer_frames_are_rejected_on_client_connections() {
    let mut bytes = Vec::new();
    encode_frame_with(PEER_FRAME_FORMAT, FrameKind::Hello, b"payload", &mut bytes);

    let error = protocol::split_frames(&bytes, LIMIT).unwrap_err();

    assert!(
        matches!(error, ProtocolError::Frame(FrameError::BadMagic { .. })),
        "{error}"
    );
}

#[test]
fn other_frame_version_is_rejected() {
    let mut format = CLIENT_FRAME_FORMAT;
    format.version += 1;
    let mut bytes = Vec::new();
    encode_frame_with(format, FrameKind::Messages, b"payload", &mut bytes);

    let error = protocol::split_frames(&bytes, LIMIT).unwrap_err();

    assert_eq!(
        error,
        ProtocolError::Frame(FrameError::UnsupportedFormatVersion {
            found: format.version,
            expected: CLIENT_FRAME_FORMAT.version,
        })
    );
}

#[test]
fn oversized_frame_is_rejected() {
    let mut bytes = Vec::new();
    encode_frame_with(
        CLIENT_FRAME_FORMAT,
        FrameKind::Messages,
        &[0u8; 64],
        &mut bytes,
    );

    let error = protocol::split_frames(&bytes, 63).unwrap_err();

    assert!(
        matches!(error, ProtocolError::Frame(FrameError::TooLarge { .. })),
        "{error}"
    );
}

proptest! {
    #[test]
    fn random_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = protocol::split_frames(&bytes, CLIENT_FRAME_BYTES_MAX);
        let mut decoder = FrameDecoder::with_format(CLIENT_FRAME_FORMAT, LIMIT);
        let mut input = &bytes[..];
        while let Ok(Some(_)) = decoder.decode(&mut input) {}
    }

    #[test]
    fn random_payloads_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        hello in any::<bool>(),
    ) {
        let kind = if hello { FrameKind::Hello } else { FrameKind::Messages };
        let mut bytes = Vec::new();
        encode_frame_with(CLIENT_FRAME_FORMAT, kind, &payload, &mut bytes);
        let frame = single_frame(&bytes);
        let _ = protocol::decode_client_hello(&frame);
        let _ = protocol::decode_hello_reply(&frame);
        let _ = protocol::decode_requests(&frame);
        let _ = protocol::decode_responses(&frame);
    }

    #[test]
    fn damaged_requests_never_panic(index in 0usize..4096, flip in 1u8..=255) {
        let batch = RequestBatch {
            requests: vec![Request {
                id: 5,
                operation: Operation::Get { key: b"some key".to_vec(), stale: false },
            }],
        };
        let mut bytes = Vec::new();
        protocol::encode_requests(&batch, &mut bytes).unwrap();
        // One damaged byte of the header or payload: the decoders must reject it, and
        // nothing may panic.
        let index = index % bytes.len();
        bytes[index] ^= flip;
        if let Ok(frames) = protocol::split_frames(&bytes, LIMIT) {
            for frame in &frames {
                let _ = protocol::decode_requests(frame);
            }
        }
    }
}
