//! Frame codec: round trips, hostile lengths, garbage.

use proptest::prelude::*;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::*;

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u8>(), ".{0,20}").prop_map(|(v, n)| Request::Hello {
            protocol_version: v,
            client_name: n
        }),
        (
            "[a-z]{1,10}",
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u32>>()
        )
            .prop_map(|(name, b, ms, seg, r)| Request::CreateTopic {
                name,
                config: TopicConfig {
                    retention_bytes: b,
                    retention_ms: ms,
                    segment_bytes: seg,
                    replicas: r,
                    program: None,
                }
            }),
        (arb_bytes(64), any::<bool>()).prop_map(|(module, reset_state)| Request::DeployProgram {
            topic: "t".into(),
            program: weir_proto::ProgramSpec {
                module,
                config: vec![("window_ms".into(), "1000".into())],
            },
            reset_state,
        }),
        "[a-z]{1,10}".prop_map(|name| Request::DeleteTopic { name }),
        Just(Request::ListTopics),
        Just(Request::Status),
        Just(Request::Cluster),
        (any::<u64>(), "[0-9.:]{1,21}")
            .prop_map(|(node_id, addr)| Request::AddNode { node_id, addr }),
        any::<u64>().prop_map(|node_id| Request::RemoveNode { node_id }),
        (
            "[a-z]{1,10}",
            proptest::option::of(arb_bytes(40)),
            arb_bytes(300),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(topic, key, value, p, s)| Request::Put(Put {
                topic,
                key,
                value,
                producer_id: ProducerId(p),
                seq: Seq(s)
            })),
        ("[a-z]{1,10}", any::<u64>(), 0u8..3).prop_map(|(topic, o, k)| Request::Listen {
            topic,
            from: match k {
                0 => ListenFrom::Start,
                1 => ListenFrom::End,
                _ => ListenFrom::Offset(Offset(o)),
            }
        }),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(arb_bytes(20)),
        arb_bytes(100),
    )
        .prop_map(|(o, t, key, value)| Event {
            offset: Offset(o),
            timestamp_ms: TimestampMs(t),
            tombstone: key.is_none(),
            key,
            value,
        })
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        Just(Reply::TopicCreated),
        Just(Reply::TopicDeleted),
        (any::<u64>(), any::<u64>()).prop_map(|(o, t)| Reply::Committed(Committed {
            offset: Offset(o),
            timestamp_ms: TimestampMs(t),
            program: None,
        })),
        (any::<u64>(), any::<u32>(), ".{0,20}").prop_map(|(o, n, m)| Reply::Committed(Committed {
            offset: Offset(o),
            timestamp_ms: TimestampMs(o),
            program: Some(if n % 2 == 0 {
                weir_proto::ProgramOutcome::Accepted {
                    first_event: Offset(o / 2),
                    events: n,
                }
            } else {
                weir_proto::ProgramOutcome::Rejected { message: m }
            }),
        })),
        proptest::collection::vec(arb_event(), 0..5).prop_map(Reply::Events),
        ".{0,50}".prop_map(|m| Reply::Error(ErrorReply::new(ErrorCode::NotFound, m))),
        (
            ".{0,50}",
            any::<u64>(),
            proptest::option::of("[0-9.:]{1,21}")
        )
            .prop_map(|(m, node_id, addr)| Reply::Error(ErrorReply::not_leader(
                m,
                addr.map(|addr| LeaderHint { node_id, addr })
            ))),
        (any::<u64>(), any::<Option<u64>>(), "[a-z]{1,10}").prop_map(|(node_id, leader, name)| {
            Reply::Cluster(ClusterInfo {
                node_id,
                nodes: vec![NodeInfo {
                    node_id,
                    addr: "127.0.0.1:7070".into(),
                }],
                metadata_leader: leader,
                topics: vec![TopicPlacement {
                    name,
                    group: node_id,
                    replicas: vec![1, 2, 3],
                    leader,
                }],
            })
        }),
        Just(Reply::ClusterChanged),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip_one_at_a_time_and_split_anywhere(
        frames in proptest::collection::vec((any::<u64>(), arb_request()), 1..20),
        split_seed in any::<u64>(),
    ) {
        let frames: Vec<ClientFrame> = frames
            .into_iter()
            .map(|(id, request)| ClientFrame { id: RequestId(id), request })
            .collect();
        let mut wire = Vec::new();
        for f in &frames {
            encode_frame(f, &mut wire).unwrap();
        }
        // Feed the bytes in uneven chunks: a frame may arrive in many pieces.
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        let mut decoded = Vec::new();
        let mut rest = &wire[..];
        let mut seed = split_seed;
        while !rest.is_empty() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = 1 + (seed >> 33) as usize % 64;
            let (chunk, tail) = rest.split_at(n.min(rest.len()));
            decoder.extend(chunk);
            decoder.check_header().unwrap();
            while let Some(f) = decoder.next::<ClientFrame>().unwrap() {
                decoded.push(f);
            }
            rest = tail;
        }
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn server_frames_round_trip(id in any::<u64>(), reply in arb_reply()) {
        let frame = ServerFrame { id: RequestId(id), reply };
        let mut wire = Vec::new();
        encode_frame(&frame, &mut wire).unwrap();
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        decoder.extend(&wire);
        prop_assert_eq!(decoder.next::<ServerFrame>().unwrap(), Some(frame));
    }

    #[test]
    fn garbage_bytes_never_panic_and_never_yield_more_than_they_hold(
        garbage in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        decoder.extend(&garbage);
        // Either an error, or frames, or "need more": never a panic.
        for _ in 0..garbage.len() + 1 {
            match decoder.next::<ClientFrame>() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[test]
fn frame_claiming_4_gib_is_rejected_from_its_header_alone() {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.extend(&u32::MAX.to_be_bytes());
    let err = decoder.check_header().unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            len: u32::MAX as usize,
            max: FRAME_BYTES_MAX
        }
    );
    assert_eq!(decoder.next::<ClientFrame>().unwrap_err(), err);
    // Nothing was buffered beyond the four header bytes.
    assert_eq!(decoder.buffered_bytes(), 4);
}

#[test]
fn frame_above_a_smaller_reader_cap_is_rejected() {
    let frame = ClientFrame {
        id: RequestId(1),
        request: Request::Put(Put {
            topic: "t".into(),
            key: None,
            value: vec![7; 2000],
            producer_id: ProducerId(0),
            seq: Seq(0),
        }),
    };
    let mut wire = Vec::new();
    encode_frame(&frame, &mut wire).unwrap();
    let mut decoder = FrameDecoder::new(1024);
    decoder.extend(&wire[..4]);
    assert!(matches!(
        decoder.check_header(),
        Err(FrameError::TooLarge { max: 1024, .. })
    ));
}

#[test]
fn empty_frame_and_unknown_version_are_errors() {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.extend(&0u32.to_be_bytes());
    assert_eq!(
        decoder.next::<ClientFrame>().unwrap_err(),
        FrameError::Empty
    );

    let mut wire = Vec::new();
    encode_frame(
        &ClientFrame {
            id: RequestId(9),
            request: Request::Status,
        },
        &mut wire,
    )
    .unwrap();
    wire[4] = 99;
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.extend(&wire);
    assert_eq!(
        decoder.next::<ClientFrame>().unwrap_err(),
        FrameError::UnsupportedVersion(99)
    );
}

#[test]
fn unknown_request_variant_is_malformed_not_a_panic() {
    // version 1, request id 1 (varint), then variant index 200: no such request.
    let body = [PROTOCOL_VERSION, 1, 200];
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.extend(&wire);
    assert!(matches!(
        decoder.next::<ClientFrame>(),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn inner_length_claiming_huge_vector_fails_without_allocating() {
    // A Put whose value claims u64::MAX bytes inside a tiny frame.
    let mut body = vec![
        PROTOCOL_VERSION,
        1,
        4, /* Put */
        1,
        b't',
        0, /* key None */
    ];
    body.push(255); // varint marker for u64
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.extend(&wire);
    assert!(matches!(
        decoder.next::<ClientFrame>(),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn trailing_bytes_inside_a_frame_are_malformed() {
    let mut wire = Vec::new();
    encode_frame(
        &ClientFrame {
            id: RequestId(3),
            request: Request::ListTopics,
        },
        &mut wire,
    )
    .unwrap();
    wire.push(0);
    let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) + 1;
    wire[..4].copy_from_slice(&len.to_be_bytes());
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.extend(&wire);
    assert!(matches!(
        decoder.next::<ClientFrame>(),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn topic_names_follow_kafkas_rule() {
    assert!(validate_topic_name("orders.v1_eu-west").is_ok());
    assert!(validate_topic_name("").is_err());
    assert!(validate_topic_name("..").is_err());
    assert!(validate_topic_name("a/b").is_err());
    assert!(validate_topic_name(&"x".repeat(250)).is_err());
    assert!(validate_topic_name(&"x".repeat(249)).is_ok());
}

#[test]
fn error_messages_are_cut_at_a_char_boundary() {
    let e = ErrorReply::new(ErrorCode::Internal, "é".repeat(5000));
    assert!(e.message.len() <= weir_proto::limits::ERROR_MESSAGE_BYTES_MAX);
    assert!(e.message.chars().all(|c| c == 'é'));
}
