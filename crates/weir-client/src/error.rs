//! [`ClientError`]: everything a client call can fail with.

use std::time::Duration;
use weir_proto::{ErrorCode, ErrorReply, Offset};

/// Why a client call failed.
///
/// Errors the node sent back keep the node's message (`NotFound`, `TooLarge`, ...); errors of the
/// client itself or of the network say what was tried. The type is `Clone` so one connection
/// failure can be handed to every request that was waiting on that connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The topic does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// `create_topic` for a name that exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A key or value above a limit (the protocol's hard limit, checked before sending, or the
    /// node's configured limit).
    #[error("too large: {0}")]
    TooLarge(String),
    /// A bad topic name, topic config or argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A listener asked for an offset outside the topic's retained range.
    #[error("offset out of range: {0}")]
    OffsetOutOfRange(String),
    /// The topic cannot serve right now (for example its log failed); see the message.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node is overloaded; retry later.
    #[error("node busy: {0}")]
    Busy(String),
    /// The request needs the leader of a topic (or of the catalog) and none could be reached:
    /// the nodes kept answering "not leader" until [`crate::LeaderRetryPolicy`] ran out (an
    /// election that does not finish, or a partition). A request that got this was not acted
    /// on, so sending it again is safe.
    #[error("not leader: {0}")]
    NotLeader(String),
    /// A producer's PUT whose sequence number is not the next one the topic expects: an
    /// earlier PUT of the producer is missing (on its way, or failed), or the topic forgot the
    /// producer (idle too long). Nothing was written.
    #[error("out of order sequence: {0}")]
    OutOfOrderSequence(String),
    /// A producer's PUT that the topic committed before (a resend), whose offset it no longer
    /// remembers: it is in the log once, but where is not known.
    #[error("duplicate sequence: {0}")]
    DuplicateSequence(String),
    /// No reply within the request timeout. A PUT that timed out may still have been committed.
    #[error("no reply from the node within {0:?}")]
    Timeout(Duration),
    /// The connection broke while the request was outstanding. A PUT that got this may or may
    /// not have been committed. The next call reconnects.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No node could be reached (each address tried, with its reason).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Bad client configuration: CA file, server name, addresses, TLS setup.
    #[error("configuration error: {0}")]
    Config(String),
    /// The node sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A programmable topic's program rejected the PUT (or it broke the program's limits). The
    /// message is in the topic's input log at `offset` but produced no events; sending it
    /// again gets the same answer unless the program's state changed.
    #[error("rejected by the topic's program (input offset {offset}): {message}")]
    Rejected { offset: Offset, message: String },
    /// Any other error the node reported (bad request, unsupported version, internal error).
    #[error("node error ({code}): {message}")]
    Server {
        /// The node's error code.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
}

impl ClientError {
    /// The node's error code, for errors the node reported (client-side size checks report
    /// [`ErrorCode::TooLarge`] / [`ErrorCode::InvalidArgument`] as well).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::NotFound(_) => Some(ErrorCode::NotFound),
            Self::AlreadyExists(_) => Some(ErrorCode::AlreadyExists),
            Self::TooLarge(_) => Some(ErrorCode::TooLarge),
            Self::InvalidArgument(_) => Some(ErrorCode::InvalidArgument),
            Self::OffsetOutOfRange(_) => Some(ErrorCode::OffsetOutOfRange),
            Self::Unavailable(_) => Some(ErrorCode::Unavailable),
            Self::Busy(_) => Some(ErrorCode::Busy),
            Self::NotLeader(_) => Some(ErrorCode::NotLeader),
            Self::OutOfOrderSequence(_) => Some(ErrorCode::OutOfOrderSequence),
            Self::DuplicateSequence(_) => Some(ErrorCode::DuplicateSequence),
            Self::Server { code, .. } => Some(*code),
            Self::Timeout(_)
            | Self::ConnectionLost(_)
            | Self::Connect(_)
            | Self::Config(_)
            | Self::Protocol(_)
            | Self::Rejected { .. } => None,
        }
    }

    /// Whether the request may have taken effect although it failed: a PUT that got
    /// `Timeout` or `ConnectionLost` (the reply was lost), `Unavailable` (the topic's log failed
    /// or its group stopped while the PUT was pending) or an internal error may or may not be
    /// in the log. Every other error means it was not acted on (`NotLeader`, `Busy`, `Connect`,
    /// validation errors), so sending it again cannot write it twice. The client resends its
    /// PUTs itself (the node de-duplicates them): a PUT that still fails with an unknown
    /// outcome has used up its request timeout, and sending the same message again is a new
    /// PUT, which may store it twice.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::ConnectionLost(_) | Self::Unavailable(_) => true,
            Self::Server { code, .. } => *code == ErrorCode::Internal,
            _ => false,
        }
    }

    /// Whether sending the same request again later may succeed. For a PUT, retrying after
    /// `Timeout` or `ConnectionLost` is a new PUT and may write the message twice.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(_)
            | Self::Busy(_)
            | Self::NotLeader(_)
            | Self::OutOfOrderSequence(_)
            | Self::Timeout(_)
            | Self::ConnectionLost(_)
            | Self::Connect(_) => true,
            Self::Server { code, .. } => code.is_retryable(),
            Self::NotFound(_)
            | Self::AlreadyExists(_)
            | Self::TooLarge(_)
            | Self::InvalidArgument(_)
            | Self::OffsetOutOfRange(_)
            | Self::DuplicateSequence(_)
            | Self::Config(_)
            | Self::Protocol(_)
            | Self::Rejected { .. } => false,
        }
    }
}

impl From<ErrorReply> for ClientError {
    fn from(reply: ErrorReply) -> Self {
        // The leader hint is used by the client's routing before an error is made of a reply.
        let ErrorReply { code, message, .. } = reply;
        match code {
            ErrorCode::NotFound => Self::NotFound(message),
            ErrorCode::AlreadyExists => Self::AlreadyExists(message),
            ErrorCode::TooLarge => Self::TooLarge(message),
            ErrorCode::InvalidArgument => Self::InvalidArgument(message),
            ErrorCode::OffsetOutOfRange => Self::OffsetOutOfRange(message),
            ErrorCode::Unavailable => Self::Unavailable(message),
            ErrorCode::Busy => Self::Busy(message),
            ErrorCode::NotLeader => Self::NotLeader(message),
            ErrorCode::OutOfOrderSequence => Self::OutOfOrderSequence(message),
            ErrorCode::DuplicateSequence => Self::DuplicateSequence(message),
            ErrorCode::BadRequest | ErrorCode::UnsupportedVersion | ErrorCode::Internal => {
                Self::Server { code, message }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_error_codes_map_to_typed_variants_keeping_the_message() {
        let e = ClientError::from(ErrorReply::new(
            ErrorCode::NotFound,
            "topic \"t\" does not exist",
        ));
        assert_eq!(
            e,
            ClientError::NotFound("topic \"t\" does not exist".into())
        );
        assert_eq!(e.to_string(), "not found: topic \"t\" does not exist");
        assert_eq!(e.code(), Some(ErrorCode::NotFound));

        let e = ClientError::from(ErrorReply::new(ErrorCode::Internal, "disk on fire"));
        assert_eq!(e.to_string(), "node error (internal error): disk on fire");
        assert_eq!(e.code(), Some(ErrorCode::Internal));
    }

    #[test]
    fn every_error_code_round_trips_through_client_error() {
        for code in [
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
        ] {
            let e = ClientError::from(ErrorReply::new(code, "m"));
            assert_eq!(e.code(), Some(code));
            assert_eq!(e.is_retryable(), code.is_retryable(), "{code:?}");
        }
    }

    #[test]
    fn not_leader_maps_to_a_retryable_typed_error_with_or_without_a_hint() {
        let hint = weir_proto::LeaderHint {
            node_id: 2,
            addr: "127.0.0.1:7071".into(),
        };
        for leader in [Some(hint), None] {
            let e = ClientError::from(ErrorReply::not_leader("node 1 does not lead t", leader));
            assert_eq!(e, ClientError::NotLeader("node 1 does not lead t".into()));
            assert_eq!(e.to_string(), "not leader: node 1 does not lead t");
            assert_eq!(e.code(), Some(ErrorCode::NotLeader));
            assert!(e.is_retryable());
        }
    }

    #[test]
    fn only_a_lost_reply_leaves_the_outcome_unknown() {
        assert!(ClientError::ConnectionLost("x".into()).outcome_unknown());
        assert!(ClientError::Timeout(Duration::from_secs(1)).outcome_unknown());
        assert!(ClientError::Unavailable("the group stopped".into()).outcome_unknown());
        // Refused before anything was appended: sending again is safe.
        assert!(!ClientError::NotLeader("x".into()).outcome_unknown());
        assert!(!ClientError::Connect("x".into()).outcome_unknown());
        assert!(!ClientError::Busy("x".into()).outcome_unknown());
        assert!(!ClientError::TooLarge("x".into()).outcome_unknown());
    }

    #[test]
    fn network_errors_are_retryable_and_usage_errors_are_not() {
        assert!(ClientError::ConnectionLost("x".into()).is_retryable());
        assert!(ClientError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!ClientError::Config("x".into()).is_retryable());
        assert!(!ClientError::TooLarge("x".into()).is_retryable());
    }
}
