//! The `frame_decoder` target: `weir_proto::FrameDecoder` on arbitrary byte streams.
//!
//! Input: `| mode u8 | stream bytes |`. `mode` picks how the stream is cut into the chunks that
//! [`FrameDecoder::extend`] receives (see [`crate::input::split_points`]). Checks, for both
//! directions (`ClientFrame`, read by the node; `ServerFrame`, read by the client):
//!
//! - nothing panics, and no single allocation exceeds `FRAME_BYTES_MAX` plus a bound set by the
//!   input's size ([`allocation_bound`]): a header claiming up to 4 GiB is refused (`TooLarge`)
//!   without reserving anything for it, and so is a length inside a message above the limit;
//! - the decoder fed chunk by chunk, as `server.rs` and `session.rs` drive it (`extend`,
//!   `check_header`, `next` until `None`), yields exactly the frames and the error that a
//!   straightforward reference parser of the frame format yields on the whole stream, and the
//!   same number of buffered bytes at the end;
//! - the decoder honours a smaller `frame_bytes_max` the same way;
//! - every decoded message re-encodes with `encode_frame` and decodes back equal;
//! - messages built from the input bytes, encoded with `encode_frame` into one stream and fed in
//!   chunks, decode back equal (the encoder's bytes always round-trip).

use crate::alloc_guard;
use crate::input::{Input, chunks};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use weir_proto::frame::FRAME_HEADER_BYTES;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::*;

/// Largest single allocation allowed while decoding `input_len` bytes.
///
/// Decoding allocates the stream buffer (at most twice what was fed), decoded strings and byte
/// vectors, and vectors of structs (serde reserves at most 1 MiB up front; growing takes at
/// least one input byte per element of at most 96 bytes, twice that while doubling): at most
/// `2 MiB + 256 * input_len`. On top of that, bincode 2.0.1 reserves a `String` (serde's
/// `deserialize_string`) or byte buffer at the length its prefix claims, zero-filled, before it
/// looks for those bytes; `codec.rs` caps every claim at its decode limit, `FRAME_BYTES_MAX`.
/// So by default the bound is that limit plus the above (a claim of 4 GiB, in a frame header or
/// inside a message, still fails it); with [`alloc_guard::strict`], only the above.
fn allocation_bound(input_len: usize) -> usize {
    let proportional = 2 * 1024 * 1024 + 256 * input_len;
    if alloc_guard::strict() {
        proportional
    } else {
        FRAME_BYTES_MAX + proportional
    }
}

pub fn run(data: &[u8]) {
    alloc_guard::reset();
    let mut input = Input::new(data);
    let mode = input.u8();
    let stream = input.rest();

    check_stream::<ClientFrame>(stream, mode, FRAME_BYTES_MAX);
    check_stream::<ServerFrame>(stream, mode, FRAME_BYTES_MAX);
    // A reader configured below the protocol's limit (the mode byte picks how far below).
    let small_max = usize::from(mode) * 8;
    check_stream::<ClientFrame>(stream, mode, small_max);
    check_stream::<ServerFrame>(stream, mode, small_max);
    alloc_guard::assert_peak_at_most(allocation_bound(data.len()), "decoding");

    encoded_round_trip(stream, mode);
}

/// What decoding a stream came to: the frames decoded, in order, then the error that ended it
/// (if any), then the bytes left buffered (a frame not yet complete).
#[derive(Debug, PartialEq)]
struct Outcome<T> {
    frames: Vec<T>,
    error: Option<FrameError>,
    buffered: usize,
}

/// Reference parser: the frame format from `frame.rs`'s doc, applied to the whole stream.
fn reference<T: DeserializeOwned>(stream: &[u8], frame_bytes_max: usize) -> Outcome<T> {
    let max = frame_bytes_max.min(FRAME_BYTES_MAX);
    let mut frames = Vec::new();
    let mut rest = stream;
    let error = loop {
        let Some((header, after)) = rest.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            break None;
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > max {
            break Some(FrameError::TooLarge { len, max });
        }
        if len == 0 {
            break Some(FrameError::Empty);
        }
        if after.len() < len {
            break None;
        }
        let (body, after_body) = after.split_at(len);
        rest = after_body;
        if body[0] != PROTOCOL_VERSION {
            break Some(FrameError::UnsupportedVersion(body[0]));
        }
        match codec::decode::<T>(&body[1..]) {
            Ok(message) => frames.push(message),
            Err(e) => break Some(FrameError::Malformed(e.to_string())),
        }
    };
    let buffered = if error.is_some() { 0 } else { rest.len() };
    Outcome {
        frames,
        error,
        buffered,
    }
}

/// Drives a [`FrameDecoder`] as the node and the client do: extend with each chunk, check the
/// header, take frames until none is complete.
fn decode_chunked<T: DeserializeOwned>(chunks: &[&[u8]], frame_bytes_max: usize) -> Outcome<T> {
    let mut decoder = FrameDecoder::new(frame_bytes_max);
    let mut frames = Vec::new();
    let mut fed = 0;
    let error = 'stream: {
        for chunk in chunks {
            decoder.extend(chunk);
            fed += chunk.len();
            assert!(decoder.buffered_bytes() <= fed);
            if let Err(e) = decoder.check_header() {
                break 'stream Some(e);
            }
            loop {
                match decoder.next::<T>() {
                    Ok(Some(message)) => frames.push(message),
                    Ok(None) => break,
                    Err(e) => break 'stream Some(e),
                }
            }
            if let Err(e) = decoder.check_header() {
                break 'stream Some(e);
            }
        }
        None
    };
    let buffered = if error.is_some() {
        0
    } else {
        decoder.buffered_bytes()
    };
    Outcome {
        frames,
        error,
        buffered,
    }
}

fn check_stream<T>(stream: &[u8], mode: u8, frame_bytes_max: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let expected = reference::<T>(stream, frame_bytes_max);
    // Whole, and cut as the mode says.
    let whole = decode_chunked::<T>(&[stream], frame_bytes_max);
    assert_eq!(whole, expected, "decoding the whole stream at once");
    let chunked = decode_chunked::<T>(&chunks(stream, mode), frame_bytes_max);
    assert_eq!(
        chunked, expected,
        "decoding the stream in chunks (mode {mode})"
    );

    for message in &expected.frames {
        let mut encoded = Vec::new();
        encode_frame(message, &mut encoded).expect("a decoded message re-encodes");
        assert!(encoded.len() <= FRAME_HEADER_BYTES + FRAME_BYTES_MAX);
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        decoder.extend(&encoded);
        decoder.check_header().expect("re-encoded header");
        let again = decoder.next::<T>().expect("re-encoded frame decodes");
        assert_eq!(again.as_ref(), Some(message), "decode(encode(decoded))");
        assert_eq!(decoder.buffered_bytes(), 0);
    }
}

/// Builds messages from the input, encodes them into one stream and decodes it in chunks.
fn encoded_round_trip(bytes: &[u8], mode: u8) {
    let mut input = Input::new(bytes);
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    while !input.is_empty() && clients.len() + servers.len() < 16 {
        if input.bool() {
            clients.push(client_frame(&mut input));
        } else {
            servers.push(server_frame(&mut input));
        }
    }
    round_trip(&clients, mode);
    round_trip(&servers, mode);
}

fn round_trip<T>(messages: &[T], mode: u8)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let mut stream = Vec::new();
    for message in messages {
        encode_frame(message, &mut stream).expect("a small message encodes");
    }
    let decoded = decode_chunked::<T>(&chunks(&stream, mode), FRAME_BYTES_MAX);
    assert_eq!(
        decoded,
        Outcome {
            frames: messages.to_vec(),
            error: None,
            buffered: 0,
        },
        "decode(encode(messages))"
    );
}

const ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::BadRequest,
    ErrorCode::UnsupportedVersion,
    ErrorCode::NotFound,
    ErrorCode::AlreadyExists,
    ErrorCode::TooLarge,
    ErrorCode::InvalidArgument,
    ErrorCode::OffsetOutOfRange,
    ErrorCode::Unavailable,
    ErrorCode::Busy,
    ErrorCode::Internal,
    ErrorCode::NotLeader,
];

fn program_spec(input: &mut Input) -> ProgramSpec {
    ProgramSpec {
        module: input.short_bytes(),
        config: input.list(|i| (i.string(), i.string())),
    }
}

fn topic_config(input: &mut Input) -> TopicConfig {
    TopicConfig {
        retention_bytes: input.option(Input::u64),
        retention_ms: input.option(Input::u64),
        segment_bytes: input.option(Input::u64),
        replicas: input.option(Input::u32),
        program: input.option(program_spec),
    }
}

pub fn client_frame(input: &mut Input) -> ClientFrame {
    let id = RequestId(input.u64());
    let request = match input.u8() % 13 {
        0 => Request::Hello {
            protocol_version: input.u8(),
            client_name: input.string(),
        },
        1 => Request::CreateTopic {
            name: input.string(),
            config: topic_config(input),
        },
        2 => Request::DeleteTopic {
            name: input.string(),
        },
        3 => Request::ListTopics,
        4 => Request::Put(Put {
            topic: input.string(),
            key: input.option(Input::short_bytes),
            value: input.short_bytes(),
            producer_id: ProducerId(input.u64()),
            seq: Seq(input.u64()),
        }),
        5 => Request::Listen {
            topic: input.string(),
            from: match input.u8() % 3 {
                0 => ListenFrom::Start,
                1 => ListenFrom::Offset(Offset(input.u64())),
                _ => ListenFrom::End,
            },
        },
        6 => Request::Status,
        7 => Request::Cluster,
        8 => Request::AddNode {
            node_id: input.u64(),
            addr: input.string(),
        },
        9 => Request::RemoveNode {
            node_id: input.u64(),
        },
        10 => Request::DeployProgram {
            topic: input.string(),
            program: program_spec(input),
            reset_state: input.bool(),
        },
        11 => Request::ShowProgram {
            topic: input.string(),
        },
        _ => Request::Put(Put {
            topic: input.string(),
            key: None,
            value: input.chunk().to_vec(),
            producer_id: ProducerId(0),
            seq: Seq(0),
        }),
    };
    ClientFrame { id, request }
}

fn raft_status(input: &mut Input) -> RaftStatus {
    RaftStatus {
        group: input.u64(),
        role: input.string(),
        term: input.u64(),
        leader: input.option(Input::u64),
        commit_index: input.u64(),
        applied_index: input.u64(),
        last_index: input.u64(),
        replicas: input.list(Input::u64),
        followers: input.list(|i| FollowerStatus {
            node_id: i.u64(),
            match_index: i.u64(),
            lag: i.u64(),
        }),
    }
}

fn node_status(input: &mut Input) -> NodeStatus {
    NodeStatus {
        server_version: input.string(),
        uptime_ms: input.u64(),
        fsync: input.string(),
        topics: input.list(|i| TopicStatus {
            name: i.string(),
            start_offset: Offset(i.u64()),
            next_offset: Offset(i.u64()),
            committed_offset: Offset(i.u64()),
            durable_offset: Offset(i.u64()),
            segments: i.u64(),
            bytes: i.u64(),
            fsyncs: i.u64(),
            appends: i.u64(),
            failure: i.option(Input::string),
            raft: i.option(raft_status),
            read_start_offset: Offset(i.u64()),
            read_end_offset: Offset(i.u64()),
        }),
        node_id: input.u64(),
        peers: input.list(|i| PeerStatus {
            node_id: i.u64(),
            addr: i.string(),
            connected: i.bool(),
            connections: i.u64(),
            messages_sent: i.u64(),
            messages_received: i.u64(),
            messages_dropped: i.u64(),
            last_error: i.option(Input::string),
        }),
        metadata: input.option(raft_status),
    }
}

pub fn server_frame(input: &mut Input) -> ServerFrame {
    let id = RequestId(input.u64());
    let reply = match input.u8() % 12 {
        0 => Reply::Hello {
            protocol_version: input.u8(),
            server_version: input.string(),
            max_message_bytes: input.u64(),
            max_key_bytes: input.u64(),
        },
        1 => Reply::TopicCreated,
        2 => Reply::TopicDeleted,
        3 => Reply::Topics(input.list(|i| TopicInfo {
            name: i.string(),
            config: topic_config(i),
            start_offset: Offset(i.u64()),
            next_offset: Offset(i.u64()),
        })),
        4 => Reply::Committed(Committed {
            offset: Offset(input.u64()),
            timestamp_ms: TimestampMs(input.u64()),
            program: input.option(|i| {
                if i.bool() {
                    ProgramOutcome::Accepted {
                        first_event: Offset(i.u64()),
                        events: i.u32(),
                    }
                } else {
                    ProgramOutcome::Rejected {
                        message: i.string(),
                    }
                }
            }),
        }),
        5 => Reply::Events(input.list(|i| Event {
            offset: Offset(i.u64()),
            timestamp_ms: TimestampMs(i.u64()),
            key: i.option(Input::short_bytes),
            value: i.short_bytes(),
            tombstone: i.bool(),
        })),
        6 => Reply::Status(node_status(input)),
        7 => Reply::Error(ErrorReply {
            code: ERROR_CODES[usize::from(input.u8()) % ERROR_CODES.len()],
            message: input.string(),
            leader: input.option(|i| LeaderHint {
                node_id: i.u64(),
                addr: i.string(),
            }),
        }),
        8 => Reply::Cluster(ClusterInfo {
            node_id: input.u64(),
            nodes: input.list(|i| NodeInfo {
                node_id: i.u64(),
                addr: i.string(),
            }),
            metadata_leader: input.option(Input::u64),
            topics: input.list(|i| TopicPlacement {
                name: i.string(),
                group: i.u64(),
                replicas: i.list(Input::u64),
                leader: i.option(Input::u64),
            }),
        }),
        9 => Reply::ClusterChanged,
        10 => Reply::ProgramDeployed {
            at_offset: Offset(input.u64()),
        },
        _ => Reply::Program(ProgramInfo {
            topic: input.string(),
            module_hash: input.string(),
            version: input.u64(),
            config: input.list(|i| (i.string(), i.string())),
            deployed_at_offset: input.option(|i| Offset(i.u64())),
            applied_offset: input.option(|i| Offset(i.u64())),
            next_event_offset: Offset(input.u64()),
            first_event_offset: Offset(input.u64()),
            snapshot_offset: input.option(|i| Offset(i.u64())),
            state_hash: input.string(),
            inputs_accepted: input.u64(),
            inputs_rejected: input.u64(),
            failure: input.option(Input::string),
        }),
    };
    ServerFrame { id, reply }
}
